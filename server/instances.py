"""Which server instances are alive, so that a crashed instance's sockets stop counting.

Every socket id this process makes starts with its instance id (`<instance>.<random>`), so a
session record (which holds socket ids, as the Node server's did) says where each socket is.
Each instance writes a heartbeat to the sorted set `instances` every second; an instance whose
heartbeat is older than `ALIVE_MS` is dead, and its sockets no longer count as connected.

An instance this one has not heard of is not dead: it may have started since the last read
(its first heartbeat precedes its first socket). A socket id naming one asks for a read now;
only a read that began after the question can find it dead (stale, or absent: it left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Collection
from typing import Final

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .clock import Clock

log = logging.getLogger(__name__)

BEAT_SECONDS: Final = 1.0
ALIVE_MS: Final = 5_000  # a crashed instance's sockets stop counting within ~5 s
FORGET_MS: Final = 24 * 3600_000  # heartbeats of long-dead instances are dropped after a day
SEPARATOR: Final = "."  # never in engine.io's base64url ids


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

    def __init__(self, clock: Clock, redis: aioredis.Redis | None = None) -> None:
        self.id = new_instance_id()
        self._clock = clock
        self._redis = redis
        self._alive: frozenset[str] = frozenset({self.id})
        self._last_seen: dict[str, int] = {}
        self._last_beat = 0  # when this instance last wrote its heartbeat
        self._grace_until = 0  # nobody is declared dead before then
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
        return self._last_seen.get(instance) if instance is not None else None

    async def beat(self) -> None:
        """Write this instance's heartbeat and read everyone's (one round trip)."""
        if self._redis is None:
            return
        asked = frozenset(self._unknown)  # the questions this read answers
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.INSTANCES, {self.id: now})
            pipe.zremrangebyscore(keys.INSTANCES, "-inf", now - FORGET_MS)
            pipe.zrange(keys.INSTANCES, 0, -1, withscores=True)
            replies = await pipe.execute()
        seen = {
            (name.decode() if isinstance(name, bytes) else name): int(score)
            for name, score in replies[2]
        }
        alive = frozenset(name for name, at in seen.items() if at > now - ALIVE_MS) | {self.id}
        if self._last_beat and now - self._last_beat > ALIVE_MS:
            # This instance could not write its heartbeat for a while (Redis away, or a stall):
            # the others may not have either. They get one full period to beat again before
            # their sockets stop counting.
            self._grace_until = now + ALIVE_MS
        if now < self._grace_until:
            alive |= self._alive & seen.keys()  # not those that left cleanly
        self._last_beat = now
        for gone in self._alive - alive:
            log.warning("Instance %s stopped sending heartbeats: its sockets no longer count", gone)
        for came in alive - self._alive:
            if came != self.id:
                log.info("Instance %s is alive", came)
        self._settle(now, alive, seen.keys(), asked)
        self._alive, self._last_seen = alive, seen

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
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.debug("Heartbeat not written: %s", exc)
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
