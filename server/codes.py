"""Where pairing codes live: in Redis, so that a code is unique across instances and a tracker on
any instance can pair with it; in this process's CodeBook without Redis, and for codes registered
while Redis is away (those pair on this instance only, and expire within 5 minutes).

Every change is a compare-and-set against the entry as read: two instances deciding about one
code at once cannot both win; the loser reads again and decides again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import msgspec
from msgspec.structs import replace
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .clock import Clock
from .instances import Instances
from .models import PendingCode
from .pairing import CodeBook

log = logging.getLogger(__name__)

# How long a code's key outlives its last change: a pending code a minute past its expiry (to
# answer "Code expired"); a paired code whose app is connected a day (renewed when it comes
# back); a paired code whose app left, the grace time.
EXPIRED_ANSWER_MS: Final = 60_000
PAIRED_MS: Final = 24 * 3600_000

# KEYS: the code, and the session's code-of index (or the code again). ARGV: the entry as read
# ("" none), the new entry ("" deletes), its lifetime (ms), the code (for the index).
_SWAP: Final = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if KEYS[2] ~= KEYS[1] then
    redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  end
end
return 1
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PendingCode).decode


class Seen(msgspec.Struct, frozen=True):
    """A code's entry as read, and what a change must find to go through."""

    code: str
    entry: PendingCode | None
    raw: bytes = b""  # in Redis: the stored JSON ("" none)
    local: bool = False  # in this process's CodeBook


class Codes:
    def __init__(
        self,
        clock: Clock,
        instances: Instances,
        grace_ms: int,
        redis: aioredis.Redis | None = None,
        available: Callable[[], bool] = lambda: False,
    ) -> None:
        self._local = CodeBook()
        self._clock = clock
        self._instances = instances
        self._grace_ms = grace_ms
        self._redis = redis
        self._available = available
        self._swap = redis.register_script(_SWAP) if redis is not None else None
        # Codes in Redis owned by this instance's sockets, to release when they leave and to
        # write back if Redis loses its data: per socket, each code's entry as last written.
        self._owned: dict[str, dict[str, PendingCode]] = {}
        self._marker: str | None = None  # Redis's data marker when this instance looked
        self._restoring: asyncio.Task[None] | None = None
        if redis is not None:
            instances.listeners.append(self)

    def _shared(self, code: str) -> bool:
        return self._redis is not None and self._available() and self._local.get(code) is None

    async def get(self, code: str) -> Seen:
        if not self._shared(code):
            return Seen(code, self._local.get(code), local=True)
        assert self._redis is not None
        try:
            raw = await self._redis.get(keys.code(code))
        except (RedisError, OSError) as exc:
            log.warning("Code lookup in Redis failed (%s): this instance's codes only", exc)
            return Seen(code, self._local.get(code), local=True)
        if raw is None:
            return Seen(code, None)
        raw = raw if isinstance(raw, bytes) else raw.encode()
        try:
            entry = self._with_live_owner(_decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("Unreadable code entry %s: treated as free", code)
            entry = None
        return Seen(code, entry, raw)

    def _with_live_owner(self, entry: PendingCode) -> PendingCode:
        """An owner on a dead instance has left: when it was last known to be there."""
        sid = entry.tracked_sid
        if sid is None or self._instances.is_live(sid):
            return entry
        return replace(entry, tracked_sid=None, left_at=self._instances.left_by(sid) or 0)

    async def put(self, entry: PendingCode, seen: Seen) -> Seen | None:
        """Store `entry` if the code is still as `seen`; returns the new state, None if not."""
        return await self._swap_entry(seen, entry)

    async def delete(self, seen: Seen) -> bool:
        return await self._swap_entry(seen, None) is not None

    async def _swap_entry(self, seen: Seen, entry: PendingCode | None) -> Seen | None:
        if seen.local:
            if self._local.get(seen.code) is not seen.entry:
                return None
            if entry is None:
                self._local.delete(seen.code)
            else:
                self._local.put(entry)
            return Seen(seen.code, entry, local=True)
        assert self._swap is not None
        raw = _encode(entry) if entry is not None else b""
        index = keys.code(seen.code)
        if entry is not None and entry.session_token is not None:
            index = keys.code_of(entry.session_token)
        try:
            swapped = await self._swap(
                keys=[keys.code(seen.code), index],
                args=[seen.raw, raw, self._lifetime(entry), seen.code],
            )
        except (RedisError, OSError) as exc:
            log.warning("Code change in Redis failed (%s)", exc)
            return None
        if not swapped:
            return None
        self._own(seen.entry, entry)
        return Seen(seen.code, entry, raw)

    def _lifetime(self, entry: PendingCode | None) -> int:
        if entry is None:
            return 1
        now = self._clock()
        if not entry.paired:
            return max(entry.expires_at + EXPIRED_ANSWER_MS - now, 1000)
        if entry.tracked_sid is None:
            return max((entry.left_at or now) + self._grace_ms - now, 1000)
        return PAIRED_MS

    def _own(self, before: PendingCode | None, after: PendingCode | None) -> None:
        if before is not None and before.tracked_sid is not None:
            owned = self._owned.get(before.tracked_sid)
            if owned is not None:
                owned.pop(before.code, None)
                if not owned:
                    del self._owned[before.tracked_sid]
        if after is not None and after.tracked_sid is not None:
            if self._instances.is_local(after.tracked_sid):
                self._owned.setdefault(after.tracked_sid, {})[after.code] = after

    def beat_ok(self, marker: str) -> None:
        """A heartbeat went through; a new data marker means Redis lost this instance's codes."""
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker and (self._restoring is None or self._restoring.done()):
            self._restoring = asyncio.create_task(self._restore(marker), name="codes-restore")

    def beat_failed(self, exc: BaseException) -> None:
        pass  # nothing to do until Redis answers

    async def _restore(self, marker: str) -> None:
        """Write back the codes of this instance's connected apps, where Redis has none (a code
        taken meanwhile stays taken: its app registers again). Codes whose app left are lost:
        a tracker entering one is told it is invalid or expired."""
        written = taken = 0
        try:
            for entries in list(self._owned.values()):
                for entry in list(entries.values()):
                    if await self.put(entry, Seen(entry.code, None)) is not None:
                        written += 1
                    else:
                        taken += 1
        except Exception:
            log.exception("Writing back the pairing codes failed: retrying at the next heartbeat")
            return
        self._marker = marker
        log.warning(
            "Redis lost its data: wrote back %d pairing codes of apps connected here "
            "(%d taken meanwhile); codes of apps that had left are lost",
            written,
            taken,
        )

    async def for_token(self, token: str) -> Seen | None:
        """The paired code of a session, if it is still there."""
        entry = self._local.for_token(token)
        if entry is not None:
            return Seen(entry.code, entry, local=True)
        if self._redis is None or not self._available():
            return None
        try:
            code = await self._redis.get(keys.code_of(token))
        except (RedisError, OSError):
            return None
        if code is None:
            return None
        seen = await self.get(code.decode() if isinstance(code, bytes) else code)
        return seen if seen.entry is not None and seen.entry.session_token == token else None

    async def release(self, sid: str, now: int) -> list[PendingCode]:
        """The socket is gone: its codes keep their state but no longer have an owner. Returns
        the codes it owned (a paired one names a session it was the tracked socket of)."""
        owned = self._local.owned_by(sid)
        self._local.release(sid, now)
        for code in list(self._owned.get(sid, ())):
            for _ in range(3):
                seen = await self.get(code)
                entry = seen.entry
                if entry is None or entry.tracked_sid != sid:
                    break
                if await self.put(replace(entry, tracked_sid=None, left_at=now), seen):
                    owned.append(entry)
                    break
        self._owned.pop(sid, None)
        return owned

    def sweep(self, now: int, grace_ms: int) -> int:
        """Forget this process's expired codes (Redis expires its own)."""
        return self._local.sweep(now, grace_ms)
