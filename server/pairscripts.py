"""Pairing events in one Redis call each, where they can be.

Step by step, a pair cost ten round trips: registerCode counted the registration, read the code
and swapped it; trackCode took the attempt's place, read the code, wrote the record, swapped
the code, recorded the bindings and gave the place back. The same steps, in the same order and
with the same checks, are made here in one script call: each piece is the Lua function of the
module that owns it (limits.py, codes.py), so a rule is written once. What decides stays in
Python (pairing.py): a call carries what it expects to find (the code as read, no record under
a new token) and changes nothing when Redis holds something else, answering what it holds.

The caller falls back to the steps, which handle Redis away and every rarer case, when a call
fails or does not apply. A Lua script runs whole or not at all.
"""

from __future__ import annotations

from typing import Any, Final

from redis import asyncio as aioredis

from .codes import SWAP_LUA
from .limits import COUNT_LUA, KEY_SECONDS, SETTLE_LUA, TAKE_LUA
from .redislane import Lane

# Answers (first element of each reply).
DONE: Final = 1
BUSY: Final = 0  # no place taken: attempts in flight hold them all (limits.BUSY)
USED_UP: Final = -1  # no place taken: failures fill the limit (limits.USED_UP); or, for a
# registration, the address holds too many pending codes
OVER_LIMIT: Final = -2  # the registration is over the address's limit: nothing else done
CHANGED: Final = 2  # the code is not as expected: nothing else done; what is there follows
EXISTS: Final = 3  # a record is there already under the new token: nothing else done

# registerCode: count the registration, then (within the limit) the code's swap if it is still
# as read.
# KEYS: the address's registrations in this window; the four keys of `swap` (codes.py).
# ARGV: the most the count may reach; the count's lifetime (s); the six arguments of `swap`.
# Returns {DONE | USED_UP (too many pending codes) | OVER_LIMIT, count} or {CHANGED, count, the
# code's entry ("" none)}.
_REGISTER: Final = (
    COUNT_LUA
    + SWAP_LUA
    + """
local n = count(KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  return {-2, n}
end
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[3] then
  return {2, n, current}
end
return {swap(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8]), n}
"""
)

# trackCode, before the code is known: take the attempt's place, then read the code.
# KEYS: the address's attempts in this window; the code. ARGV: the three arguments of `take`.
# Returns {DONE, failures, the code's entry ("" none)} or {BUSY | USED_UP, failures}.
_LOOK: Final = (
    TAKE_LUA
    + """
local took = take(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if took[1] == 1 then
  took[3] = redis.call('GET', KEYS[2]) or ''
end
return took
"""
)

# trackCode by the first tracker: the attempt's place (taken here unless taken already), the
# code as read, no record under the new token; then the record, the code paired to it, the
# bindings of both sockets (crashes.py) and the place given back, honest.
# KEYS: the address's attempts in this window; the four keys of `swap`; the record; per binding
# the set of its socket's instance.
# ARGV: 1 to take the place here, else 0; the three arguments of `take`; the six of `swap`; the
# record; its lifetime (s); the bindings' lifetime (s); per binding its member.
# Returns {DONE | BUSY | USED_UP | EXISTS, failures} or {CHANGED, failures, the code's entry}.
_PAIR: Final = (
    TAKE_LUA
    + SETTLE_LUA
    + SWAP_LUA
    + """
local failed = 0
if ARGV[1] == '1' then
  local took = take(KEYS[1], ARGV[2], ARGV[3], ARGV[4])
  if took[1] ~= 1 then
    return took
  end
  failed = took[2]
end
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[5] then
  return {2, failed, current}
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {3, failed}
end
swap(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
redis.call('SET', KEYS[6], ARGV[11], 'EX', ARGV[12])
for i = 7, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[i + 7])
  redis.call('EXPIRE', KEYS[i], ARGV[13])
end
settle(KEYS[1], ARGV[3], '0')
return {1, failed}
"""
)

Reply = tuple[int, int, bytes | None]
Args = list[str | bytes | int]


def _reply(raw: Any) -> Reply:
    current = raw[2] if len(raw) > 2 else None
    if isinstance(current, str):
        current = current.encode()
    return int(raw[0]), int(raw[1]), current


class PairingScripts:
    """The three calls; each raises what redis-py raises (the caller falls back)."""

    def __init__(self, redis: aioredis.Redis | Lane) -> None:
        self._register = redis.register_script(_REGISTER)
        self._look = redis.register_script(_LOOK)
        self._pair = redis.register_script(_PAIR)

    async def register(
        self, count_key: str, most: int, ttl: int, swap_keys: list[str], swap_args: Args
    ) -> Reply:
        reply = await self._register(keys=[count_key, *swap_keys], args=[most, ttl, *swap_args])
        return _reply(reply)

    async def look(self, attempts_key: str, take_args: list[int], code_key: str) -> Reply:
        return _reply(await self._look(keys=[attempts_key, code_key], args=take_args))

    async def pair(
        self,
        place: tuple[str, list[int]],
        swap: tuple[list[str], Args],
        record: tuple[str, bytes, int],
        bindings: tuple[list[str], list[str], int],
    ) -> Reply:
        """`place`: the attempts key and the take's arguments ([]: taken already)."""
        attempts_key, take_args = place
        record_key, raw, record_ttl = record
        binding_keys, members, binding_ttl = bindings
        # Taken already: the place is only given back (with the key's lifetime, as a take).
        take: Args = [1, *take_args] if take_args else [0, 0, KEY_SECONDS, 0]
        reply = await self._pair(
            keys=[attempts_key, *swap[0], record_key, *binding_keys],
            args=[*take, *swap[1], raw, record_ttl, binding_ttl, *members],
        )
        return _reply(reply)
