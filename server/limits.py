"""Limits per client address, counted across instances in Redis: failed code attempts, and
code registrations.

A fixed one-minute window per address: simple, and at most twice the limit in any 60 s. With
Redis away (or not configured) the count is kept in this process, so the limit still holds here.

A code attempt takes its place before it is evaluated (atomically, in Redis), so handler calls
running at once on any instance cannot evaluate more than the limit: failures plus attempts
still being evaluated never exceed it. An attempt that turns out honest gives its place back;
one that finds every place held by attempts still in flight (honest pairings at once from one
NAT address) waits a moment for them, one that finds them held by failures is refused at once.
"""

from __future__ import annotations

import asyncio
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
KEY_SECONDS: Final = 2 * WINDOW_MS // 1000  # a window's count outlives it: never a stray key

# How long an attempt waits, in turns, for places held by attempts in flight: about 1.25 s.
BUSY_WAITS: Final = (0.05, 0.1, 0.2, 0.4, 0.5)

# KEYS: the address's attempts in one window (hash: failed, inflight).
# ARGV: the limit, the key's lifetime (s), failures this process counted while Redis was away
# (added first: every instance then counts them).
# Returns {1 taken | 0 busy (failures and attempts in flight fill the limit) | -1 used up
# (failures alone fill it), the failures counted}.
_TAKE: Final = """
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
local inflight = tonumber(redis.call('HGET', KEYS[1], 'inflight') or '0')
if failed >= tonumber(ARGV[1]) then
  return {-1, failed}
end
if failed + inflight >= tonumber(ARGV[1]) then
  return {0, failed}
end
redis.call('HINCRBY', KEYS[1], 'inflight', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, failed}
"""

# KEYS: the address's attempts in one window. ARGV: the key's lifetime (s), 1 to count a failure.
# An attempt is over: its place goes back (and a failure is counted).
_SETTLE: Final = """
redis.call('HINCRBY', KEYS[1], 'inflight', -1)
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: the address's count in one window. ARGV: the key's lifetime (s). Returns the count.
_COUNT: Final = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return count
"""

TAKEN: Final = 1
BUSY: Final = 0
USED_UP: Final = -1


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
    """One event's code attempt: takes a place before the code is looked at, and settles once:
    a failure unless the event said it was honest."""

    def __init__(self, limiter: AttemptLimiter, address: str) -> None:
        self._limiter = limiter
        self.address = address
        self._taken: tuple[int, bool] | None = None  # window, counted in Redis
        self._refused = False
        self._honest = False

    async def spend(self) -> bool:
        """Take a place (the first call only); False when the address has none left."""
        if self._taken is not None or self._refused:
            return not self._refused
        window = self._limiter.window()
        for wait in (*BUSY_WAITS, None):
            state, shared = await self._limiter.take(self.address, window)
            if state == TAKEN:
                self._taken = window, shared
                return True
            if state == USED_UP or wait is None:
                break
            await asyncio.sleep(wait)  # the places are held by attempts still in flight
        self._refused = True
        return False

    def honest(self) -> None:
        """The attempt was right (a live code, a known token): it will not count."""
        self._honest = True

    async def settle(self) -> None:
        """Give the place back, counting a failure unless it was honest (once)."""
        if self._taken is None:
            return
        window, shared = self._taken
        self._taken = None
        await self._limiter.settle(self.address, window, not self._honest, shared)


class AttemptLimiter:
    """Failed code attempts (and unknown tokens on the status route) per address."""

    def __init__(
        self,
        clock: Clock,
        limit: int,
        redis: aioredis.Redis | None = None,
        redis_available: Callable[[], bool] = lambda: False,
    ) -> None:
        self._clock = clock
        self.limit = limit
        self._redis = redis
        self._redis_available = redis_available
        self._take = redis.register_script(_TAKE) if redis is not None else None
        self._settle = redis.register_script(_SETTLE) if redis is not None else None
        # In this process: [failed, in flight] per (address, window), counted while Redis is away.
        self._local: dict[tuple[str, int], list[int]] = {}
        # The failures Redis last reported per (address, window): when Redis fails in the middle
        # of a burst, the count in this process goes on from there, not from zero.
        self._shared: dict[tuple[str, int], int] = {}
        self._swept = 0  # the window in which earlier windows were forgotten

    def window(self) -> int:
        return self._clock() // WINDOW_MS

    def ticket(self, address: str) -> Ticket:
        return Ticket(self, address)

    async def failed(self, address: str) -> bool:
        """Count one failed attempt at once; False if the address had no place left for it."""
        ticket = self.ticket(address)
        if not await ticket.spend():
            return False
        await ticket.settle()
        return True

    async def blocked(self, address: str) -> bool:
        """True once the address's failures fill the limit in this window."""
        window = self.window()
        failed = self._local.get((address, window), [0, 0])[0]
        if self._redis is not None and self._redis_available():
            try:
                stored = await self._redis.hget(keys.attempts(address, window), "failed")
                return failed + int(stored or 0) >= self.limit
            except (RedisError, OSError):
                pass
        return failed + self._shared.get((address, window), 0) >= self.limit

    async def take(self, address: str, window: int) -> tuple[int, bool]:
        """Take a place for an attempt in `window`: TAKEN, BUSY or USED_UP, and whether it was
        taken in Redis (True) or in this process."""
        self._sweep(window)
        local = self._local.setdefault((address, window), [0, 0])
        if self._take is not None and self._redis_available():
            try:
                state, failed = await self._take(
                    keys=[keys.attempts(address, window)],
                    # Less the attempts this process still evaluates without Redis; its
                    # failures meanwhile go to Redis, for every instance to count.
                    args=[max(self.limit - local[1], 0), KEY_SECONDS, local[0]],
                )
                local[0] = 0
                self._shared[(address, window)] = int(failed)
                return int(state), True
            except (RedisError, OSError) as exc:
                log.warning("Counting attempts in memory, Redis failed: %s", exc.__class__.__name__)
        failed = local[0] + self._shared.get((address, window), 0)
        if failed >= self.limit:
            return USED_UP, False
        if failed + local[1] >= self.limit:
            return BUSY, False
        local[1] += 1
        return TAKEN, False

    async def settle(self, address: str, window: int, failed: bool, shared: bool) -> None:
        """An attempt in `window` is over: its place goes back, and a failure is counted."""
        if shared:
            assert self._settle is not None
            key = keys.attempts(address, window)
            try:
                # One script call: cheaper than MULTI/EXEC around the same commands.
                await self._settle(keys=[key], args=[KEY_SECONDS, int(failed)])
                return
            except (RedisError, OSError) as exc:
                # Its place stays taken until the window ends; a failure is counted here.
                log.warning("Settling an attempt in Redis failed: %s", exc.__class__.__name__)
        local = self._local.setdefault((address, window), [0, 0])
        if not shared:
            local[1] = max(local[1] - 1, 0)
        if failed:
            local[0] += 1

    def _sweep(self, window: int) -> None:
        """Forget the counts of past windows, once per window."""
        if window <= self._swept:
            return
        self._swept = window
        for counts in (self._local, self._shared):
            for key in [key for key in counts if key[1] < window]:
                del counts[key]


class RateLimiter:
    """Events of one kind per address and minute, each counted before it is handled (INCR and
    EXPIRE in one script call), never given back: code registrations."""

    def __init__(
        self,
        clock: Clock,
        limit: int,
        redis: aioredis.Redis | None = None,
        redis_available: Callable[[], bool] = lambda: False,
        key: Callable[[str, int], str] = keys.registrations,
    ) -> None:
        self._clock = clock
        self.limit = limit
        self._redis = redis
        self._redis_available = redis_available
        self._key = key
        self._count = redis.register_script(_COUNT) if redis is not None else None
        self._local: dict[tuple[str, int], int] = {}
        self._shared: dict[tuple[str, int], int] = {}  # Redis's last count, as above
        self._swept = 0

    async def allow(self, address: str) -> bool:
        """Count one event; False when it is over the limit."""
        window = self._clock() // WINDOW_MS
        if window > self._swept:
            self._swept = window
            for counts in (self._local, self._shared):
                for past in [past for past in counts if past[1] < window]:
                    del counts[past]
        local = self._local.get((address, window), 0)
        if self._count is not None and self._redis_available():
            key = self._key(address, window)
            try:
                stored = await self._count(keys=[key], args=[KEY_SECONDS])
                self._shared[(address, window)] = int(stored)
                return local + int(stored) <= self.limit
            except (RedisError, OSError) as exc:
                log.warning("Counting events in memory, Redis failed: %s", exc.__class__.__name__)
        self._local[(address, window)] = local + 1
        return local + 1 + self._shared.get((address, window), 0) <= self.limit
