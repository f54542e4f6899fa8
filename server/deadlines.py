"""When each session's alert and reminder fall due, and who fires them.

In memory: a heap. In Redis: one sorted set of due times (member `<kind>:<token>`), written in
the same script call as the session record (store.py), and a sorted set of leases: a claim
moves due members to the leases atomically, so one instance fires each; a lease not released
in time (its instance died) is taken over by the next claim. Due times are the wall-clock times
the app sees (the claimer's clock); leases run on Redis's clock (TIME in the script), so that a
few seconds of skew between hosts never hands a live lease to a second instance.
"""

from __future__ import annotations

import heapq
from typing import Final

from redis import asyncio as aioredis

from . import keys

LEASE_MS: Final = 30_000

Claimed = tuple[str, str, int]  # (kind, token, due)


def member(kind: str, token: str) -> str:
    return f"{kind}:{token}"


class MemoryDeadlines:
    """Deadlines of a single process without Redis.

    A deadline that changes leaves its old heap entry behind (skipped when it comes up); once
    the heap holds more than twice the live deadlines it is rebuilt from them, so a session
    that checks in every few minutes for weeks costs two entries, not thousands.
    """

    def __init__(self) -> None:
        self._due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    @property
    def queued(self) -> int:
        """Heap entries, superseded ones included."""
        return len(self._heap)

    def set(self, token: str, due: dict[str, int], kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            name = member(kind, token)
            when = due.get(kind)
            if when is None:
                self._due.pop(name, None)
            elif self._due.get(name) != when:
                self._due[name] = when
                heapq.heappush(self._heap, (when, name))
        if len(self._heap) > 2 * len(self._due):
            # Linear, after at least as many changes as there are live deadlines: amortised
            # constant per change.
            self._heap = [(when, name) for name, when in self._due.items()]
            heapq.heapify(self._heap)

    async def claim(self, now: int, limit: int) -> list[Claimed]:
        claimed: list[Claimed] = []
        while self._heap and self._heap[0][0] <= now and len(claimed) < limit:
            when, name = heapq.heappop(self._heap)
            if self._due.get(name) == when:  # else replaced or removed since
                del self._due[name]
                kind, token = name.split(":", 1)
                claimed.append((kind, token, when))
        return claimed

    async def release(self, claimed: Claimed) -> None:
        pass

    async def retry(self, claimed: Claimed, after_ms: int) -> None:
        kind, token, when = claimed
        name = member(kind, token)
        if name not in self._due:  # else set anew meanwhile: that one stands
            self._due[name] = when
            heapq.heappush(self._heap, (when, name))

    def next_due(self) -> int | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


# KEYS: the deadlines set, the leases set, the rebase key. ARGV: now (the claimer's clock, ms: for
# due times), the lease's length (ms, on Redis's clock), how many to claim. Nothing is claimed
# while the rebase key exists (Redis lost its data a moment ago: keys.DATA_REBASE). Leases that
# ran out are taken over first, then due members are moved to the leases. Returns the members
# claimed, `<member>|<due>`.
_CLAIM: Final = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local t = redis.call('TIME')
local redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_until = redis_now + tonumber(ARGV[2])
local out = {}
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', redis_now, 'LIMIT', 0, limit)
for _, m in ipairs(stale) do
  redis.call('ZADD', KEYS[2], lease_until, m)
  table.insert(out, m)
end
if #out < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
    limit - #out)
  for i = 1, #due, 2 do
    local m = due[i] .. '|' .. due[i + 1]
    redis.call('ZREM', KEYS[1], due[i])
    redis.call('ZADD', KEYS[2], lease_until, m)
    table.insert(out, m)
  end
end
return out
"""


# KEYS: the leases set. ARGV: the member, how long from now (ms, Redis's clock) until it is
# claimed again. Only a lease still held is moved (a lease taken over meanwhile is not ours).
_RETRY: Final = """
local t = redis.call('TIME')
local redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', redis_now + tonumber(ARGV[2]), ARGV[1])
"""


class RedisDeadlines:
    """Deadlines shared by every instance, in Redis."""

    def __init__(self, redis: aioredis.Redis, lease_ms: int = LEASE_MS) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._retry = redis.register_script(_RETRY)
        self.lease_ms = lease_ms

    async def claim(self, now: int, limit: int) -> list[Claimed]:
        raw = await self._claim(
            keys=[keys.DEADLINES, keys.DEADLINE_LEASES, keys.DATA_REBASE],
            args=[now, self.lease_ms, limit],
        )
        claimed: list[Claimed] = []
        for item in raw:
            name, _, when = (item.decode() if isinstance(item, bytes) else item).rpartition("|")
            kind, token = name.split(":", 1)
            claimed.append((kind, token, int(float(when))))
        return claimed

    async def release(self, claimed: Claimed) -> None:
        kind, token, due = claimed
        await self._redis.zrem(keys.DEADLINE_LEASES, f"{member(kind, token)}|{due}")

    async def retry(self, claimed: Claimed, after_ms: int) -> None:
        """Not fired this time (the record could not be checked): claimed again in `after_ms`
        rather than when the lease runs out."""
        kind, token, due = claimed
        await self._retry(
            keys=[keys.DEADLINE_LEASES], args=[f"{member(kind, token)}|{due}", after_ms]
        )

    async def count(self) -> int:
        return int(await self._redis.zcard(keys.DEADLINES))
