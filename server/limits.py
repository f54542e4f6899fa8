"""Attempts per client address (failed code attempts, code registrations), counted across
instances in Redis.

A fixed one-minute window per address: simple, and at most twice the limit in any 60 s. With
Redis away (or not configured) the count is kept in this process, so the limit still holds here.
An attempt is counted before it is evaluated (INCR and EXPIRE in one transaction), so handler
calls running at once cannot evaluate past the limit; one that turns out honest is refunded.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Final

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .clock import Clock

log = logging.getLogger(__name__)

WINDOW_MS: Final = 60_000


def client_address(remote: str | None, headers: Mapping[str, str], trust_proxy: bool) -> str:
    """The address to count attempts against; IPv6 clients are counted per /64 network.

    Forwarded headers are believed only behind a proxy we trust (Railway's edge sets them), and
    then the address our proxy saw: X-Real-IP, or the last X-Forwarded-For entry.
    """
    address = remote or "unknown"
    if trust_proxy:
        forwarded = headers.get("X-Real-IP") or headers.get("X-Forwarded-For", "").split(",")[-1]
        address = forwarded.strip() or address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Ticket:
    """One event's attempt: counted at most once, refunded at most once."""

    def __init__(self, limiter: AttemptLimiter, address: str) -> None:
        self._limiter = limiter
        self.address = address
        self._spent: tuple[int, bool, bool] | None = None  # window, allowed, counted in Redis
        self._refunded = False

    async def spend(self) -> bool:
        """Count the attempt (the first call only); False when it is over the limit."""
        if self._spent is None:
            window = self._limiter.window()
            count, shared = await self._limiter.count(self.address, window)
            self._spent = window, count <= self._limiter.limit, shared
        return self._spent[1]

    async def refund(self) -> None:
        """The attempt turned out honest: it does not count (once, and only if allowed)."""
        if self._spent is None or not self._spent[1] or self._refunded:
            return
        self._refunded = True
        window, _, shared = self._spent
        await self._limiter.uncount(self.address, window, shared)


class AttemptLimiter:
    def __init__(
        self,
        clock: Clock,
        limit: int,
        redis: aioredis.Redis | None = None,
        redis_available: Callable[[], bool] = lambda: False,
        key: Callable[[str, int], str] = keys.attempts,
    ) -> None:
        self._clock = clock
        self.limit = limit
        self._redis = redis
        self._redis_available = redis_available
        self._key = key
        self._local: dict[tuple[str, int], int] = {}
        # The last count Redis answered per (address, window): when Redis fails in the middle
        # of a burst, the count in this process goes on from there, not from zero.
        self._shared: dict[tuple[str, int], int] = {}
        self._swept = 0  # the window the counts of earlier ones were forgotten in

    def ticket(self, address: str) -> Ticket:
        return Ticket(self, address)

    def window(self) -> int:
        return self._clock() // WINDOW_MS

    async def blocked(self, address: str) -> bool:
        """True once the address has used up its failed attempts in this window."""
        return await self._count(address) >= self.limit

    async def failed(self, address: str) -> int:
        """Count one failed attempt; returns the address's count in this window, this one
        included (above the limit: refuse it)."""
        return (await self.count(address, self.window()))[0]

    async def count(self, address: str, window: int) -> tuple[int, bool]:
        """Count one attempt in `window`; returns the count, this one included, and whether it
        was counted in Redis (True) or in this process."""
        self._sweep(window)
        local = self._local.get((address, window), 0)
        if self._redis is not None and self._redis_available():
            key = self._key(address, window)
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, 2 * WINDOW_MS // 1000)
                    stored, _ = await pipe.execute()
                self._shared[(address, window)] = int(stored)
                return local + int(stored), True
            except (RedisError, OSError) as exc:
                log.warning("Counting attempts in memory, Redis failed: %s", exc.__class__.__name__)
        self._local[(address, window)] = local + 1
        return local + 1 + self._shared.get((address, window), 0), False

    async def uncount(self, address: str, window: int, shared: bool) -> None:
        """Take back one attempt counted in `window` (where it was counted)."""
        if shared:
            assert self._redis is not None
            key = self._key(address, window)
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.decr(key)
                    pipe.expire(key, 2 * WINDOW_MS // 1000)  # never a key without expiry
                    await pipe.execute()
            except (RedisError, OSError):
                pass  # the honest user loses one attempt of this minute, nothing more
            return
        local = self._local.get((address, window), 0)
        if local > 0:
            self._local[(address, window)] = local - 1

    async def _count(self, address: str) -> int:
        window = self.window()
        local = self._local.get((address, window), 0)
        if self._redis is None or not self._redis_available():
            return local
        try:
            stored = await self._redis.get(self._key(address, window))
        except (RedisError, OSError):
            return local
        return local + int(stored or 0)

    def _sweep(self, window: int) -> None:
        """Forget the counts of past windows, once per window."""
        if window <= self._swept:
            return
        self._swept = window
        for counts in (self._local, self._shared):
            for key in [key for key in counts if key[1] < window]:
                del counts[key]
