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
import functools
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

# The pieces of the scripts below, as Lua functions: the pairing scripts (pairscripts.py) make
# them part of one call with the code's change.

# An attempt takes a place: the address's attempts in one window (hash: failed, inflight); the
# limit, the key's lifetime (s), failures this process counted while Redis was away (added
# first: every instance then counts them). Returns {1 taken | 0 busy (failures and attempts in
# flight fill the limit) | -1 used up (failures alone fill it), the failures counted}.
TAKE_LUA: Final = """
local function take(key, limit, ttl, failures)
  if tonumber(failures) > 0 then
    redis.call('HINCRBY', key, 'failed', failures)
    redis.call('EXPIRE', key, ttl)
  end
  local failed = tonumber(redis.call('HGET', key, 'failed') or '0')
  local inflight = tonumber(redis.call('HGET', key, 'inflight') or '0')
  if failed >= tonumber(limit) then
    return {-1, failed}
  end
  if failed + inflight >= tonumber(limit) then
    return {0, failed}
  end
  redis.call('HINCRBY', key, 'inflight', 1)
  redis.call('EXPIRE', key, ttl)
  return {1, failed}
end
"""

# An attempt is over: its place goes back (and a failure is counted: failed '1').
SETTLE_LUA: Final = """
local function settle(key, ttl, failed)
  redis.call('HINCRBY', key, 'inflight', -1)
  if failed == '1' then
    redis.call('HINCRBY', key, 'failed', 1)
  end
  redis.call('EXPIRE', key, ttl)
end
"""

# One more event of an address in a window (INCR and EXPIRE); returns the count.
COUNT_LUA: Final = """
local function count(key, ttl)
  local n = redis.call('INCR', key)
  redis.call('EXPIRE', key, ttl)
  return n
end
"""

# KEYS: the address's attempts in one window. ARGV: the limit, the key's lifetime (s), failures
# counted here while Redis was away.
_TAKE: Final = TAKE_LUA + "return take(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"

# KEYS: the address's attempts in one window. ARGV: the key's lifetime (s), 1 to count a failure.
_SETTLE: Final = SETTLE_LUA + "settle(KEYS[1], ARGV[1], ARGV[2])\nreturn 1"

# KEYS: the address's count in one window. ARGV: the key's lifetime (s). Returns the count.
_COUNT: Final = COUNT_LUA + "return count(KEYS[1], ARGV[1])"

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
    # Parsing costs more than the rest of a connect's bookkeeping: the addresses seen lately
    # are remembered (short ones: a forwarded header may be long).
    return _counted_as(address) if len(address) <= 64 else _parsed(address)


def _parsed(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


_counted_as = functools.lru_cache(maxsize=4096)(_parsed)


class Ticket:
    """One event's code attempt: takes a place before the code is looked at, and settles once:
    a failure unless the event said it was honest."""

    def __init__(self, limiter: AttemptLimiter, address: str) -> None:
        self._limiter = limiter
        self.address = address
        self._taken: tuple[int, bool] | None = None  # window, counted in Redis
        self._refused = False
        self._honest = False
        self._busy = False  # a script found every place held by attempts still in flight
        self._window = 0  # of the place a script was asked to take

    async def spend(self) -> bool:
        """Take a place (the first call only); False when the address has none left."""
        if self._taken is not None or self._refused:
            return not self._refused
        waits: tuple[float | None, ...] = (*BUSY_WAITS, None)
        if self._busy:
            self._busy = False
            await asyncio.sleep(BUSY_WAITS[0])  # a script found them busy already
            waits = waits[1:]
        window = self._limiter.window()
        for wait in waits:
            state, shared = await self._limiter.take(self.address, window)
            if state == TAKEN:
                self._taken = window, shared
                return True
            if state == USED_UP or wait is None:
                break
            await asyncio.sleep(wait)  # the places are held by attempts still in flight
        self._refused = True
        return False

    def place(self) -> tuple[str, list[int]] | None:
        """For a script that takes this attempt's place in the same call as its work
        (pairscripts.py): the attempts key, and the take's arguments ([]: taken already, in
        Redis). None when no script can: refused, taken in this process, or Redis away."""
        if self._refused:
            return None
        if self._taken is not None:
            window, shared = self._taken
            return (keys.attempts(self.address, window), []) if shared else None
        self._window = self._limiter.window()
        args = self._limiter.take_args(self.address, self._window)
        if args is None:
            return None
        return keys.attempts(self.address, self._window), args

    def took(self, state: int, failed: int) -> None:
        """What a script asked to take the place (`place()` gave arguments) answered."""
        self._limiter.took(self.address, self._window, failed)
        if state == TAKEN:
            self._taken = self._window, True
        elif state == USED_UP:
            self._refused = True
        else:
            self._busy = True

    def settled_honest(self) -> None:
        """A script gave the place back, as honest, in the call that paired."""
        self._honest = True
        self._taken = None

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

    def take_args(self, address: str, window: int) -> list[int] | None:
        """The arguments of a take in Redis (TAKE_LUA) now; None while Redis is away."""
        if self._take is None or not self._redis_available():
            return None
        self._sweep(window)
        local = self._local.setdefault((address, window), [0, 0])
        # Less the attempts this process still evaluates without Redis; its failures
        # meanwhile go to Redis, for every instance to count.
        return [max(self.limit - local[1], 0), KEY_SECONDS, local[0]]

    def took(self, address: str, window: int, failed: int) -> None:
        """A take in Redis went through: the failures counted here are there now."""
        self._local.setdefault((address, window), [0, 0])[0] = 0
        self._shared[(address, window)] = int(failed)

    async def take(self, address: str, window: int) -> tuple[int, bool]:
        """Take a place for an attempt in `window`: TAKEN, BUSY or USED_UP, and whether it was
        taken in Redis (True) or in this process."""
        self._sweep(window)
        local = self._local.setdefault((address, window), [0, 0])
        args = self.take_args(address, window)
        if self._take is not None and args is not None:
            try:
                state, failed = await self._take(keys=[keys.attempts(address, window)], args=args)
                self.took(address, window, failed)
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

    def _window(self) -> int:
        window = self._clock() // WINDOW_MS
        if window > self._swept:
            self._swept = window
            for counts in (self._local, self._shared):
                for past in [past for past in counts if past[1] < window]:
                    del counts[past]
        return window

    def count_args(self, address: str) -> tuple[str, int, int] | None:
        """For a script that counts the event in the same call as its work (pairscripts.py):
        the key, the most events the count in Redis may reach (the limit less those counted
        here alone), and the window. None while Redis is away."""
        if self._count is None or not self._redis_available():
            return None
        window = self._window()
        local = self._local.get((address, window), 0)
        return self._key(address, window), self.limit - local, window

    def counted(self, address: str, window: int, stored: int) -> bool:
        """What the count in Redis came to: whether the event is within the limit."""
        self._shared[(address, window)] = int(stored)
        return self._local.get((address, window), 0) + int(stored) <= self.limit

    async def allow(self, address: str) -> bool:
        """Count one event; False when it is over the limit."""
        window = self._window()
        local = self._local.get((address, window), 0)
        if self._count is not None and self._redis_available():
            key = self._key(address, window)
            try:
                stored = await self._count(keys=[key], args=[KEY_SECONDS])
                return self.counted(address, window, stored)
            except (RedisError, OSError) as exc:
                log.warning("Counting events in memory, Redis failed: %s", exc.__class__.__name__)
        self._local[(address, window)] = local + 1
        return local + 1 + self._shared.get((address, window), 0) <= self.limit
