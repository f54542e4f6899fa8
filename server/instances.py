"""Which server instances are alive, so that a crashed instance's sockets stop counting.

Every socket id this process makes starts with its instance id (`<instance>.<random>`), so a
session record (which holds socket ids, as the Node server's did) says where each socket is.
Each instance writes a heartbeat to the sorted set `instances` every second; an instance whose
heartbeat is older than `ALIVE_MS` is dead, and its sockets no longer count as connected.
Heartbeats are scored by Redis's clock (TIME in the script), never by each host's own: a few
seconds of skew between hosts must not kill a live instance.

The heartbeat is also how this instance watches Redis (every second, even with no client):
each beat is bounded in time and its listeners hear whether it went through, and it reads the
data marker, a key written once into an empty Redis: a new marker means Redis lost its data.

An instance this one has not heard of is not dead: it may have started since the last read
(its first heartbeat precedes its first socket). A socket id naming one asks for a read now;
only a read that began after the question can find it dead (stale, or absent: it left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Collection
from typing import Final, Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .clock import Clock

log = logging.getLogger(__name__)

BEAT_SECONDS: Final = 1.0
ALIVE_MS: Final = 5_000  # a crashed instance's sockets stop counting within ~5 s
FORGET_MS: Final = 24 * 3600_000  # heartbeats of long-dead instances are dropped after a day
SEPARATOR: Final = "."  # never in engine.io's base64url ids
# A beat that takes longer counts as failed: a frozen Redis is seen within ~2 s.
BEAT_TIMEOUT_SECONDS: Final = 1.0

# KEYS: the instances set, the data marker. ARGV: this instance's id, how long (ms) the heartbeats
# of long-dead instances are kept, a new marker (written if there is none). Returns Redis's time
# (ms), the marker, and every instance with its last heartbeat (Redis ms). TIME before writes is
# fine in Redis 7 (scripts replicate their effects).
_BEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local marker = redis.call('GET', KEYS[2])
if not marker then
  redis.call('SET', KEYS[2], ARGV[3])
  marker = ARGV[3]
end
return {now, marker, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""


class BeatListener(Protocol):
    """Told how every heartbeat went: the heartbeat is the one steady look at Redis."""

    def beat_ok(self, marker: str) -> None: ...

    def beat_failed(self, exc: BaseException) -> None: ...


def new_instance_id() -> str:
    return secrets.token_hex(4)


def owner(sid: str) -> str | None:
    """The instance that made a socket id; None for ids made elsewhere (e.g. the Node server)."""
    instance, separator, _ = sid.partition(SEPARATOR)
    return instance if separator else None


class Instances:
    """This instance's id, the set of live instances, and the heartbeat that keeps it current.

    Without Redis this is the only instance. While Redis is away the last known set is kept:
    nobody is declared dead because this instance cannot see them.
    """

    def __init__(
        self, clock: Clock, redis: aioredis.Redis | None = None, alive_ms: int = ALIVE_MS
    ) -> None:
        self.id = new_instance_id()
        self._clock = clock
        self._redis = redis
        self._beat_script = redis.register_script(_BEAT) if redis is not None else None
        self.alive_ms = alive_ms
        self._alive: frozenset[str] = frozenset({self.id})
        self._last_seen: dict[str, int] = {}  # in Redis's time
        self._offset = 0  # this host's clock minus Redis's, at the last beat
        self._last_beat = 0  # when this instance last wrote its heartbeat (Redis's time)
        self._grace_until = 0  # nobody is declared dead before then (Redis's time)
        self._kept: frozenset[str] = frozenset()  # alive when Redis lost its data
        self.marker: str | None = None  # the data marker as last read
        self.beat_at: float | None = None  # time.monotonic() of the last beat that went through
        self.listeners: list[BeatListener] = []
        # Instances known dead (stale heartbeat, or gone from the set): when that was learnt.
        self._gone: dict[str, int] = {}
        # Instances named by a socket id that the last read did not know: live until a read
        # that began after the question says otherwise.
        self._unknown: set[str] = set()
        self._read_now = asyncio.Event()
        # Instances found dead, for the sweep that tells their sockets' sessions (crashes.py).
        self.found_dead: asyncio.Queue[str] = asyncio.Queue()

    @property
    def others(self) -> bool:
        """Whether another instance may be alive (and hold sockets to deliver to): one that
        beats, or one a socket id named that no read has answered for yet."""
        return len(self._alive) > 1 or bool(self._unknown)

    def alive(self) -> frozenset[str]:
        return self._alive

    def is_live(self, sid: str) -> bool:
        """Whether a socket id may still be connected: its instance is not known dead."""
        instance = owner(sid)
        if instance is None:
            return False  # made by the Node server: none of its sockets is connected here
        if instance in self._alive:
            return True
        if instance in self._gone:
            return False
        if instance not in self._unknown:
            self._unknown.add(instance)
            self._read_now.set()
        return True

    def is_local(self, sid: str) -> bool:
        return owner(sid) == self.id

    def left_by(self, sid: str) -> int | None:
        """For a socket of a dead instance: when it was last known to be connected."""
        instance = owner(sid)
        seen = self._last_seen.get(instance) if instance is not None else None
        return seen + self._offset if seen is not None else None  # in this host's time

    def fresh(self) -> bool:
        """Whether the live set is current: the last beat went through less than ALIVE_MS ago."""
        return self.beat_at is not None and time.monotonic() - self.beat_at < self.alive_ms / 1000

    async def beat(self) -> None:
        """Write this instance's heartbeat and read everyone's (one round trip)."""
        if self._beat_script is None:
            return
        asked = frozenset(self._unknown)  # the questions this read answers
        now, marker, scores = await self._beat_script(
            keys=[keys.INSTANCES, keys.DATA_MARKER], args=[self.id, FORGET_MS, secrets.token_hex(8)]
        )
        now = int(now)
        self._offset = self._clock() - now
        previous, self.marker = (
            self.marker,
            marker.decode() if isinstance(marker, bytes) else str(marker),
        )
        self.beat_at = time.monotonic()
        seen = {
            (name.decode() if isinstance(name, bytes) else name): int(float(score))
            for name, score in zip(scores[::2], scores[1::2], strict=True)
        }
        alive = frozenset(name for name, at in seen.items() if at > now - self.alive_ms) | {self.id}
        if self._last_beat and now - self._last_beat > self.alive_ms:
            # This instance could not write its heartbeat for a while (Redis away, or a stall):
            # the others may not have either. They get one full period to beat again before
            # their sockets stop counting.
            self._grace_until = now + self.alive_ms
            self._kept = frozenset()
        if previous is not None and self.marker != previous:
            # Redis lost its data, and every heartbeat with it: nobody died of that. Those alive
            # before get a full period to beat again.
            self._grace_until = now + self.alive_ms
            self._kept = self._alive
        if now < self._grace_until:
            alive |= self._alive & (seen.keys() | self._kept)  # not those that left cleanly
        self._last_beat = now
        for gone in self._alive - alive:
            log.warning("Instance %s stopped sending heartbeats: its sockets no longer count", gone)
        for came in alive - self._alive:
            if came != self.id:
                log.info("Instance %s is alive", came)
        self._settle(now, alive, seen.keys(), asked)
        self._alive, self._last_seen = alive, seen

    async def check(self) -> bool:
        """One heartbeat, bounded in time; the listeners hear how it went."""
        if self._beat_script is None:
            return True  # the only instance: nothing to watch
        try:
            async with asyncio.timeout(BEAT_TIMEOUT_SECONDS):
                await self.beat()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("Heartbeat not written: %s", exc or exc.__class__.__name__)
            for listener in self.listeners:
                listener.beat_failed(exc)
            return False
        assert self.marker is not None
        for listener in self.listeners:
            listener.beat_ok(self.marker)
        return True

    def _settle(
        self, now: int, alive: frozenset[str], present: Collection[str], asked: frozenset[str]
    ) -> None:
        """Who is dead after a read (`present`: every heartbeat there, stale ones included):
        those alive before and not now, those asked about and not alive, and those whose
        heartbeat is there but stale. Each is found dead once."""
        dead = (self._alive | asked | set(present)) - alive - {self.id}
        for instance in dead - self._gone.keys():
            self._gone[instance] = now
            self.found_dead.put_nowait(instance)
        for instance in alive & self._gone.keys():
            del self._gone[instance]  # it beats again: it was stalled, not dead
        self._unknown -= asked | alive
        for instance, at in list(self._gone.items()):
            if at < now - FORGET_MS:
                del self._gone[instance]  # long gone: if named again, a read says so again

    async def run_forever(self) -> None:
        while True:
            self._read_now.clear()
            await self.check()
            # The next read comes sooner if a socket id names an instance not heard of.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._read_now.wait(), BEAT_SECONDS)

    async def leave(self) -> None:
        """On a clean shutdown: others stop counting this instance at once."""
        if self._redis is None:
            return
        try:
            await self._redis.zrem(keys.INSTANCES, self.id)
        except (RedisError, OSError) as exc:
            log.debug("Heartbeat not removed: %s", exc)

    async def close(self) -> None:
        """Close the Redis client of the heartbeat (its own: see app.build_shared)."""
        if self._redis is not None:
            await self._redis.aclose()
