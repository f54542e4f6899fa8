"""Where pairing codes live: in Redis, so that a code is unique across instances and a tracker on
any instance can pair with it; in this process's CodeBook without Redis, and for codes registered
while Redis is away (those pair on this instance only, and expire within 5 minutes).

Every change is a compare-and-set against the entry as read: two instances deciding about one
code at once cannot both win; the loser reads again and decides again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from msgspec.structs import replace
from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from . import keys
from .clock import Clock
from .instances import Instances
from .models import PendingCode, Session
from .pairing import CODE_TTL_MS, CodeBook, retired

log = logging.getLogger(__name__)

# How long a code's key outlives its last change: a pending code a minute past its expiry (to
# answer "Code expired"); a paired code whose app is connected a day (renewed when it comes
# back); a paired code whose app left, the grace time.
EXPIRED_ANSWER_MS: Final = 60_000
PAIRED_MS: Final = 24 * 3600_000

# A code's change, as a Lua function (the pairing scripts, pairscripts.py, make it part of one
# call with the rest of an event's work). Its keys: the code; the session's code-of index (or
# the code again); the pending-codes set of the address the entry as read is counted under, and
# of the one the new entry is to be counted under (each: or the code again, for none). Then the
# entry as read ("" none); the new entry ("" deletes); its lifetime (ms); the code; how long the
# new entry counts as pending (ms); the most pending codes an address may hold.
# Returns 1 done, 0 the entry changed meanwhile, -1 the address holds too many pending codes.
# Each set is trimmed of what stopped counting before it is counted, by Redis's clock (TIME),
# like the PX expiry of the codes themselves: expiry and release keep the count right.
SWAP_LUA: Final = """
local function swap(code, index, was, counted, seen, new, lifetime, value, pending_ms, most)
  if (redis.call('GET', code) or '') ~= seen then
    return 0
  end
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  if counted ~= code then
    redis.call('ZREMRANGEBYSCORE', counted, '-inf', now)
    if not redis.call('ZSCORE', counted, value)
       and redis.call('ZCARD', counted) >= tonumber(most) then
      return -1
    end
  end
  if was ~= code then
    redis.call('ZREM', was, value)
  end
  if new == '' then
    redis.call('DEL', code)
  else
    redis.call('SET', code, new, 'PX', lifetime)
    if index ~= code then
      redis.call('SET', index, value, 'PX', lifetime)
    end
  end
  if counted ~= code then
    local ms = tonumber(pending_ms)
    redis.call('ZADD', counted, now + ms, value)
    if redis.call('PTTL', counted) < ms then
      redis.call('PEXPIRE', counted, ms)
    end
  end
  return 1
end
"""

# KEYS and ARGV: those of `swap` above, in its order.
_SWAP: Final = (
    SWAP_LUA
    + "return swap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], "
    + "ARGV[5], ARGV[6])"
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PendingCode).decode


class Seen(msgspec.Struct, frozen=True):
    """A code's entry as read, and what a change must find to go through."""

    code: str
    entry: PendingCode | None
    raw: bytes = b""  # in Redis: the stored JSON ("" none)
    local: bool = False  # in this process's CodeBook


class TooManyPending(Exception):
    """The owner's address already holds PENDING_CODES_PER_ADDRESS unpaired codes."""


def _left(entry: PendingCode, now: int) -> PendingCode:
    return replace(entry, tracked_sid=None, left_at=now)


def _counted_under(entry: PendingCode | None, now: int) -> str | None:
    """The address an entry counts against: an unpaired code, until it expires."""
    if entry is None or entry.paired or entry.address is None or now > entry.expires_at:
        return None
    return entry.address


class Codes:
    def __init__(
        self,
        clock: Clock,
        instances: Instances,
        grace_ms: int,
        redis: aioredis.Redis | None = None,
        available: Callable[[], bool] = lambda: False,
        *,
        pending_per_address: int = 100,
        records: Callable[[], list[tuple[str, Session]]] = list,
    ) -> None:
        self._local = CodeBook()
        self._clock = clock
        self._instances = instances
        self._grace_ms = grace_ms
        self._redis = redis
        self._available = available
        self._pending_per_address = pending_per_address
        self._records = records  # the session records held here (store.records)
        self._swap = redis.register_script(_SWAP) if redis is not None else None
        # Codes in Redis owned by this instance's sockets, as this instance last wrote them:
        # to release them when their socket leaves (one round trip), to find its pending ones,
        # and to write back if Redis loses its data.
        self._owned: dict[str, dict[str, Seen]] = {}
        self._owner_of: dict[str, str] = {}  # code -> its socket in _owned (for `cached`)
        # Paired codes whose app left from here, while their app may take them back (the grace
        # time): written back too if Redis loses its data, and looked up here while it is away.
        self._left_here: dict[str, PendingCode] = {}
        # Codes whose socket left while Redis was away: Redis still names the socket as owner,
        # so they are released there once it answers (else the app's next socket would find
        # its own code in use).
        self._unreleased: dict[str, tuple[Seen, PendingCode]] = {}
        # Sockets whose release could not reach Redis (for Events: told once it answers).
        self.unreachable: set[str] = set()
        self._marker: str | None = None  # Redis's data marker when this instance looked
        self._restoring: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        if redis is not None:
            instances.listeners.append(self)

    def _shared(self, code: str) -> bool:
        return self._redis is not None and self._available() and self._local.get(code) is None

    async def get(self, code: str) -> Seen:
        if not self._shared(code):
            return self._get_here(code)
        assert self._redis is not None
        try:
            raw = await self._redis.get(keys.code(code))
        except (RedisError, OSError) as exc:
            log.warning("Code lookup in Redis failed (%s): this instance's codes only", exc)
            return self._get_here(code)
        return self._seen(code, raw)

    def _get_here(self, code: str) -> Seen:
        """Without Redis: this process's code, or one it wrote to Redis last (so that the app
        registering its code again during an outage gets its session, not a fresh code)."""
        entry = self._local.get(code)
        if entry is None:
            entry = self._held_here(code)
            if entry is not None:
                self._local.put(entry)  # this process decides about it until Redis is back
        return Seen(code, entry, local=True)

    def _held_here(self, code: str) -> PendingCode | None:
        """A code in Redis that this instance wrote last: one its connected socket owns, or a
        paired one whose app left from here within the grace time."""
        for owned in self._owned.values():
            seen = owned.get(code)
            if seen is not None and seen.entry is not None:
                return self._as_paired(seen.entry)
        left = self._left_here.pop(code, None)
        if left is not None and not retired(left, self._clock(), self._grace_ms):
            return left
        return None

    def _as_paired(self, entry: PendingCode) -> PendingCode:
        """A code this instance registered may have been paired through another instance
        since (this one wrote it last as pending): a record held here that names it says so.
        Else a tracker entering it while Redis is away would split the pairing in two."""
        if entry.paired:
            return entry
        for token, session in self._records():
            if session.code == entry.code:
                return replace(entry, session_token=token)
        return entry

    def _seen(self, code: str, raw: bytes | str | None) -> Seen:
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
        """Store `entry` if the code is still as `seen`; returns the new state, None if not.
        Raises TooManyPending when it would be one unpaired code too many for its address."""
        return await self._swap_entry(seen, entry)

    async def delete(self, seen: Seen) -> bool:
        return await self._swap_entry(seen, None) is not None

    async def _swap_entry(self, seen: Seen, entry: PendingCode | None) -> Seen | None:
        if seen.local:
            return self._swap_local(seen, entry)
        try:
            swapped = await self._swap_script(seen, entry)
        except (RedisError, OSError) as exc:
            log.warning("Code change in Redis failed (%s)", exc)
            return None
        return self.swapped(seen, entry, swapped)

    def _swap_local(self, seen: Seen, entry: PendingCode | None) -> Seen | None:
        if self._local.get(seen.code) is not seen.entry:
            return None
        if entry is None:
            self._local.delete(seen.code)
            return Seen(seen.code, None, local=True)
        now = self._clock()
        address = _counted_under(entry, now)
        if (
            address is not None
            and address != _counted_under(seen.entry, now)
            and self._local.pending_from(address, now) >= self._pending_per_address
        ):
            raise TooManyPending(address)
        self._local.put(entry)
        return Seen(seen.code, entry, local=True)

    def _swap_script(
        self, seen: Seen, entry: PendingCode | None, client: Any = None
    ) -> Awaitable[Any]:
        """The swap of one code (on `client`: a pipeline, else the connection pool)."""
        assert self._swap is not None
        swap_keys, swap_args = self.swap_call(seen, entry)
        return self._swap(keys=swap_keys, args=swap_args, client=client)

    def swap_call(
        self, seen: Seen, entry: PendingCode | None
    ) -> tuple[list[str], list[str | bytes | int]]:
        """The keys and arguments of SWAP_LUA's `swap` that change `seen` into `entry`."""
        raw = _encode(entry) if entry is not None else b""
        code_key = keys.code(seen.code)
        index = code_key
        if entry is not None and entry.session_token is not None:
            index = keys.code_of(entry.session_token)
        now = self._clock()
        was_counted = _counted_under(seen.entry, now)
        counted = _counted_under(entry, now)
        pending_ms = 1
        if entry is not None and counted is not None:
            pending_ms = max(entry.expires_at - now, 1)
        swap_keys = [
            code_key,
            index,
            keys.pending_codes(was_counted) if was_counted else code_key,
            keys.pending_codes(counted) if counted else code_key,
        ]
        swap_args: list[str | bytes | int] = [
            seen.raw,
            raw,
            self._lifetime(entry),
            seen.code,
            pending_ms,
            self._pending_per_address,
        ]
        return swap_keys, swap_args

    def shared(self, code: str) -> bool:
        """Whether Redis decides about `code` now (a pairing script may change it there)."""
        return self._shared(code)

    def cached(self, code: str) -> Seen | None:
        """The code as this instance last wrote it to Redis, if a socket here owns it: what a
        pairing script may expect to find there (it checks; else it answers what is there)."""
        sid = self._owner_of.get(code)
        return self._owned.get(sid, {}).get(code) if sid is not None else None

    def _disown(self, sid: str, code: str | None = None) -> dict[str, Seen]:
        """The socket no longer owns `code` here (None: any code); returns what it owned."""
        owned = self._owned.get(sid, {})
        gone = {code: owned.pop(code)} if code in owned else {}
        if code is None:
            gone, owned = owned, {}
        if not owned:
            self._owned.pop(sid, None)
        for lost in gone:
            if self._owner_of.get(lost) == sid:
                del self._owner_of[lost]
        return gone

    def seen(self, code: str, raw: bytes | str | None) -> Seen:
        """The entry a script read from Redis."""
        return self._seen(code, raw)

    def swapped(self, seen: Seen, entry: PendingCode | None, swapped: Any) -> Seen | None:
        """What a swap answered, made a result (and the owners kept up to date)."""
        if swapped == -1:
            assert entry is not None and entry.address is not None
            raise TooManyPending(entry.address)
        if not swapped:
            return None
        raw = _encode(entry) if entry is not None else b""
        now = Seen(seen.code, entry, raw)
        self._own(seen.entry, now)
        return now

    def _lifetime(self, entry: PendingCode | None) -> int:
        if entry is None:
            return 1
        now = self._clock()
        if not entry.paired:
            return max(entry.expires_at + EXPIRED_ANSWER_MS - now, 1000)
        if entry.tracked_sid is None:
            return max((entry.left_at or now) + self._grace_ms - now, 1000)
        return PAIRED_MS

    def _own(self, before: PendingCode | None, after: Seen) -> None:
        if before is not None and before.tracked_sid is not None:
            self._disown(before.tracked_sid, after.code)
        entry = after.entry
        self._unreleased.pop(after.code, None)  # changed in Redis since
        if entry is None or entry.tracked_sid is not None:
            self._left_here.pop(after.code, None)  # gone, or someone's again
        if entry is not None and entry.tracked_sid is not None:
            if self._instances.is_local(entry.tracked_sid):
                self._owned.setdefault(entry.tracked_sid, {})[after.code] = after
                self._owner_of[after.code] = entry.tracked_sid

    def beat_ok(self, marker: str) -> None:
        """A heartbeat went through; a new data marker means Redis lost this instance's codes."""
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker:
            if self._restoring is None or self._restoring.done():
                self._restoring = asyncio.create_task(self._restore(marker), name="codes-restore")
            return
        if (self._unreleased or len(self._local)) and self._available():
            if self._releasing is None or self._releasing.done():
                self._releasing = asyncio.create_task(self._settle(), name="codes-settle")

    async def _settle(self) -> None:
        """Redis answers again after an outage: what this process did alone goes there."""
        try:
            await self._release_again()
            await self._hand_back()
        except (RedisError, OSError) as exc:
            log.debug("Codes not settled in Redis yet (%s): at the next heartbeat", exc)

    async def _write_back_one(self, entry: PendingCode) -> bool:
        """Write back a code this instance held, where Redis has none; or, for the app
        connected here, over the entry another instance wrote back from its record of the
        same pairing (with no owner: it cannot know the app's socket)."""
        assert self._redis is not None
        there = self._seen(entry.code, await self._redis.get(keys.code(entry.code)))
        if there.entry is not None:
            theirs = there.entry
            mine = entry.tracked_sid is not None and theirs.tracked_sid is None
            if not (mine and theirs.paired and entry.session_token in (None, theirs.session_token)):
                return False
            entry = replace(
                theirs, tracked_sid=entry.tracked_sid, left_at=None, address=entry.address
            )
        with contextlib.suppress(TooManyPending):
            return await self._swap_entry(there, entry) is not None
        return False

    async def _restore_from_records(self) -> int:
        """After a loss of data: each record held here names the code that paired it. Where
        Redis has no entry for it, or only a pending one of the same app (its instance knew the
        code before a tracker paired it elsewhere), it is written back paired to the session,
        owned by the record's tracked socket (or left now). Returns how many."""
        assert self._redis is not None
        written = 0
        now = self._clock()
        for token, session in self._records():
            if session.code is None:
                continue
            there = self._seen(session.code, await self._redis.get(keys.code(session.code)))
            if there.entry is not None and (
                there.entry.paired or there.entry.tracked_sid != session.tracked_socket_id
            ):
                continue
            # The owner as the instance that holds the app's socket wrote it, else nobody: a
            # record written back may name a socket that left meanwhile. The app takes it back
            # with its token (Session.code), or from its address.
            owner = there.entry.tracked_sid if there.entry is not None else None
            entry = PendingCode(
                code=session.code,
                tracked_sid=owner,
                expires_at=now + CODE_TTL_MS,
                session_token=token,
                left_at=None if owner is not None else now,
                address=there.entry.address if there.entry is not None else session.code_address,
            )
            with contextlib.suppress(TooManyPending):
                if await self._swap_entry(there, entry) is not None:
                    written += 1
        return written

    async def _hand_back(self) -> tuple[int, int]:
        """The codes this process decided alone while Redis was away (registered, or given
        back to their app, here) go to Redis, where every instance finds them (the app may
        come back through another): where Redis has none, or the same pairing or owner (this
        one is newer). A code another pairing took there meanwhile stays theirs; this one's
        app registers again. Returns how many went, and how many were taken."""
        written = taken = 0
        assert self._redis is not None
        for entry in self._local.entries():
            there = self._seen(entry.code, await self._redis.get(keys.code(entry.code)))
            theirs = there.entry
            ours = (
                theirs is None
                or (entry.session_token is not None and theirs.session_token == entry.session_token)
                or (entry.tracked_sid is not None and theirs.tracked_sid == entry.tracked_sid)
            )
            try:
                went = ours and await self._swap_entry(there, entry) is not None
            except TooManyPending:
                went = False
            if self._local.get(entry.code) is entry:
                self._local.delete(entry.code)  # Redis decides about it from now on
            written += went
            taken += not went
        if written or taken:
            log.info(
                "Pairing codes made here while Redis was away are in Redis again: %d (%d taken "
                "there meanwhile)",
                written,
                taken,
            )
        return written, taken

    async def _release_again(self) -> None:
        """Release in Redis the codes whose socket left while it was away (as this instance
        last wrote them: one changed elsewhere since is left as it is)."""
        changes = list(self._unreleased.values())
        done = await self._swap_all(changes)
        if done is None:
            return  # still away: at the next heartbeat
        for seen, _ in changes:
            if self._unreleased.get(seen.code, (None,))[0] is seen:
                del self._unreleased[seen.code]

    def beat_failed(self, exc: BaseException) -> None:
        pass  # nothing to do until Redis answers

    async def _restore(self, marker: str) -> None:
        """Write back the codes of this instance's connected apps, and the paired codes whose
        app left from here within the grace time, where Redis has none (a code taken meanwhile
        stays taken: its app registers again). Codes whose app left from an instance that is
        gone are lost: a tracker entering one is told it is invalid or expired."""
        written = taken = 0
        now = self._clock()
        held = [seen.entry for entries in self._owned.values() for seen in entries.values()]
        held += [e for e in self._left_here.values() if not retired(e, now, self._grace_ms)]
        try:
            for entry in held:
                if entry is None:
                    continue
                if await self._write_back_one(self._as_paired(entry)):
                    written += 1
                else:
                    taken += 1
            # The paired codes the records held here name (Session.code), paired: another
            # instance may hold its app's socket, and only the pending code it registered.
            written += await self._restore_from_records()
            # And those decided here while Redis was away (an app re-registering its code).
            local_written, local_taken = await self._hand_back()
        except Exception:
            log.exception("Writing back the pairing codes failed: retrying at the next heartbeat")
            return
        written += local_written
        taken += local_taken
        self._unreleased.clear()  # written back as left, or not at all (pending ones)
        self._marker = marker
        log.warning(
            "Redis lost its data: wrote back %d pairing codes of apps connected here or just "
            "left (%d taken meanwhile)",
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
        the codes it owned (a paired one names a session it was the tracked socket of).

        All of its codes in Redis change in one round trip; only those another instance
        changed meanwhile (a tracker paired one there) are read again, all at once."""
        owned = self._local.owned_by(sid)
        self._local.release(sid, now)
        mine = [seen for seen in self._disown(sid).values() if seen.entry is not None]
        for _ in range(3):
            changes = [(seen, _left(seen.entry, now)) for seen in mine if seen.entry is not None]
            done = await self._swap_all(changes)
            if done is None:
                # Redis is away: what this instance wrote last stands, left from here (a paired
                # one is written back, or given back to its app, from that).
                self.unreachable.add(sid)
                for seen, left in changes:
                    owned.append(left)
                    self._unreleased[seen.code] = (seen, left)
                    if left.paired:
                        self._left_here[seen.code] = left
                break
            again = []
            for (seen, left), ok in zip(changes, done, strict=True):
                if ok and seen.entry is not None:
                    owned.append(seen.entry)
                    if left.paired:
                        self._left_here[seen.code] = left
                elif not ok:
                    again.append(seen.code)
            lefts = {seen.code: left for seen, left in changes}
            mine = []
            for seen in await self._get_all(again):
                if seen.entry is None:
                    # Gone from Redis (it lost its data; the heartbeat has not seen it yet):
                    # left from here, so the write-back that follows includes it.
                    left = lefts[seen.code]
                    owned.append(left)
                    if left.paired:
                        self._left_here[seen.code] = left
                elif seen.entry.tracked_sid == sid:
                    mine.append(seen)
        self._disown(sid)
        return owned

    async def _swap_all(self, changes: list[tuple[Seen, PendingCode]]) -> list[bool] | None:
        """Swap every code in one round trip; whether each went through (None: Redis away)."""
        if not changes:
            return []
        assert self._redis is not None
        answers: list[Any]
        try:
            if len(changes) == 1:
                # The usual app's one code: a script call (a pipeline with a script asks
                # SCRIPT EXISTS first, a round trip more, every time).
                try:
                    answers = [await self._swap_script(*changes[0])]
                except ResponseError as exc:  # as the pipeline answers it (raise_on_error)
                    answers = [exc]
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for seen, entry in changes:
                        await self._swap_script(seen, entry, client=pipe)
                    answers = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.warning("Releasing codes in Redis failed (%s)", exc)
            return None
        done = []
        for (seen, entry), answer in zip(changes, answers, strict=True):
            ok = not isinstance(answer, Exception) and self.swapped(seen, entry, answer) is not None
            done.append(ok)
        return done

    async def _get_all(self, codes: list[str]) -> list[Seen]:
        """The entries of `codes` in Redis, read in one round trip."""
        if not codes or self._redis is None or not self._available():
            return []
        try:
            raws = await self._redis.mget([keys.code(code) for code in codes])
        except (RedisError, OSError):
            return []
        return [self._seen(code, raw) for code, raw in zip(codes, raws, strict=True)]

    async def retire_pending(self, sid: str, keep: int) -> int:
        """The socket's unpaired codes beyond its newest `keep` are deleted (the app shows only
        its newest code); returns how many went."""
        local = [e for e in self._local.owned_by(sid) if not e.paired]
        retired = 0
        for entry in sorted(local, key=lambda e: e.expires_at)[: max(len(local) - keep, 0)]:
            self._local.delete(entry.code)
            retired += 1
        keep = max(keep - (len(local) - retired), 0)
        maybe = [
            s.code for s in self._owned.get(sid, {}).values() if s.entry and not s.entry.paired
        ]
        if len(maybe) <= keep:
            return retired
        fresh = await self._get_all(maybe)
        owned = self._owned.get(sid, {})
        for seen in fresh:  # what other instances did to them meanwhile (a tracker paired one)
            if seen.entry is not None and seen.entry.tracked_sid == sid:
                owned[seen.code] = seen
            else:
                owned.pop(seen.code, None)
                if self._owner_of.get(seen.code) == sid:
                    del self._owner_of[seen.code]
        pending = [
            seen
            for seen in fresh
            if seen.code in owned and seen.entry is not None and not seen.entry.paired
        ]
        pending.sort(key=lambda seen: seen.entry.expires_at if seen.entry else 0)
        for seen in pending[: max(len(pending) - keep, 0)]:
            if await self.delete(seen):
                retired += 1
        return retired

    def sweep(self, now: int, grace_ms: int) -> int:
        """Forget this process's expired codes (Redis expires its own)."""
        for code in [c for c, e in self._left_here.items() if retired(e, now, grace_ms)]:
            del self._left_here[code]
        return self._local.sweep(now, grace_ms)
