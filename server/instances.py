"""Which server instances are alive, so that a crashed instance's sockets stop counting.

Every socket id this process makes starts with its instance id (`<instance>.<random>`), so a
session record (which holds socket ids, as the Node server's did) says where each socket is.
Each instance writes a heartbeat to the sorted set `instances` every second; an instance whose
heartbeat is older than `ALIVE_MS` is dead, and its sockets no longer count as connected.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
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

    @property
    def others(self) -> bool:
        """Whether any other instance is alive (and may hold sockets to deliver to)."""
        return len(self._alive) > 1

    def alive(self) -> frozenset[str]:
        return self._alive

    def is_live(self, sid: str) -> bool:
        """Whether a socket id may still be connected: its instance is alive."""
        return owner(sid) in self._alive

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
        self._alive, self._last_seen = alive, seen

    async def run_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.debug("Heartbeat not written: %s", exc)
            await asyncio.sleep(BEAT_SECONDS)

    async def leave(self) -> None:
        """On a clean shutdown: others stop counting this instance at once."""
        if self._redis is None:
            return
        try:
            await self._redis.zrem(keys.INSTANCES, self.id)
        except (RedisError, OSError) as exc:
            log.debug("Heartbeat not removed: %s", exc)
