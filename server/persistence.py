"""Redis persistence: a mixin over MemoryStore that reads records through from Redis and writes
them back with a compare-and-set, so that instances sharing one Redis never lose each other's
changes; and the Redis client they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec.structs import replace
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys, tasks
from .clock import Clock
from .deadlines import RedisDeadlines, member
from .instances import Instances
from .logs import token_ref
from .models import Session
from .redislane import Lane
from .rules import deadlines, live_sockets
from .store import (
    IDLE_EVICT_MS,
    KINDS,
    REMOVE,
    UNCHANGED,
    MemoryStore,
    StoreUnavailable,
    _encode,
    _Op,
    decode_record,
)

log = logging.getLogger(__name__)

MAX_HELD_OPS: Final = 100  # changes kept per session while Redis is away
WRITE_BACK_BATCH: Final = 500  # records per script call when Redis lost its data
# After Redis lost its data, writes wait this long after this instance's write-back: every live
# instance sees the loss at its next heartbeat (1 s) and writes back its newest copies first,
# then the changes not yet written are made on whichever copy won (compare-and-set, as always).
REBASE_SECONDS: Final = 2.0
# And no deadline is claimed by any instance for this long after the first one saw the loss:
# alerts are decided once the copies and the changes held meanwhile are all in.
REBASE_CLAIMS_MS: Final = 5_000

# KEYS: the deadlines set, then one record key per session. ARGV: the TTL, then per session the
# record as this process last saw it in Redis ("" none, "*" whatever is there, "<N" none or one
# whose revision is below N: after Redis lost its data, the newest copy wins), the record to
# write ("-" none: only check that it is still as seen), and per kind of deadline the member and
# its due time ("" removes it, "-" leaves it). A record that is not as seen is not written: its
# position and what is there now ("" none) are returned, for the change to be made again on it.
_WRITE: Final = f"""
local per = 2 + 2 * {len(KINDS)}
local conflicts = {{}}
local function older(current, revision)
  if current == '' then
    return true
  end
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' then
    return false
  end
  return (tonumber(record['revision']) or 0) < revision
end
local function as_seen(current, expected)
  if expected == '*' then
    return true
  end
  if string.sub(expected, 1, 1) == '<' then
    return older(current, tonumber(string.sub(expected, 2)))
  end
  return current == expected
end
for i = 2, #KEYS do
  local a = 2 + (i - 2) * per
  local current = redis.call('GET', KEYS[i]) or ''
  if not as_seen(current, ARGV[a]) then
    conflicts[#conflicts + 1] = i - 1
    conflicts[#conflicts + 1] = current
  elseif ARGV[a + 1] ~= '-' then
    redis.call('SET', KEYS[i], ARGV[a + 1], 'EX', ARGV[1])
    for k = a + 2, a + per - 1, 2 do
      if ARGV[k + 1] == '' then
        redis.call('ZREM', KEYS[1], ARGV[k])
      elseif ARGV[k + 1] ~= '-' then
        redis.call('ZADD', KEYS[1], ARGV[k + 1], ARGV[k])
      end
    end
  end
end
return conflicts
"""
ANY: Final = "*"
ABSENT: Final = ""


def older_than(revision: int) -> str:
    """What a write expects when Redis may have lost the record: none, or an older copy."""
    return f"<{revision}"


class Round(asyncio.Future[None]):
    """One round of the group commit, that every writer of the round waits on. It cannot be
    cancelled: a writer whose task is cancelled gets its CancelledError when the round ends
    (its change is in the round, and written), and the others' round goes on. This replaces
    an asyncio.shield per writer (an outer future and two callbacks each: 2.7% of a
    check-in's CPU)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


if TYPE_CHECKING:
    _StoreBase = MemoryStore
else:
    _StoreBase = object


class RedisPersistence(_StoreBase):
    """Mixin over MemoryStore: records read through from and written through to Redis.

    Memory caches what Redis holds; Redis is the truth that instances share. Each change is
    made on the cached record at once (no await: the events of this process never lose each
    other's changes) and kept until it is written. A write goes through only if the record in
    Redis is still the one this process last saw (compare-and-set, in the same script call as
    the rest of its batch); if another instance changed it first, the newer record is cached and
    every change not yet written is made again on it, then written. An event is answered only
    once its change is in Redis, or held: a write that fails marks its token dirty, and the
    recovery task writes it (the same way) once Redis answers again.
    """

    def __init__(
        self,
        clock: Clock,
        redis: aioredis.Redis,
        instances: Instances | None = None,
        lane: Lane | None = None,
    ) -> None:
        super().__init__(clock)
        self._redis = redis
        # The group commit's script goes down the lane when there is one (server/redislane.py).
        self._lane = lane
        # Socket ids count only while the instance that made them is alive.
        self.instances = instances if instances is not None else Instances(clock)
        self._is_live = self.instances.is_live
        self._is_local = self.instances.is_local
        self.deadlines = RedisDeadlines(redis)
        self._write_script = (lane or redis).register_script(_WRITE)
        # Per token: the record as last read from or written to Redis, and what it decodes to.
        self._seen: dict[str, tuple[bytes, Session]] = {}
        # Per token: the changes made in memory and not yet written, oldest first.
        self._ops: dict[str, list[_Op[Any]]] = {}
        # The deadlines last written per token: unchanged ones are not written again.
        self._synced: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        # Tokens whose changes outgrew MAX_HELD_OPS while Redis was away: written as they are.
        self._forced: set[str] = set()
        # Tokens whose record was gone from Redis: written unless a newer copy is there now.
        self._gone: set[str] = set()
        # Group commit: tokens changed since the last write, the future their writers wait on,
        # and the task that writes them.
        self._pending: set[str] = set()
        self._batch: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        # One write at a time (group commit, recovery, write-back): each counts the changes
        # it wrote from the same lists.
        self._writing = asyncio.Lock()
        self._wake = asyncio.Event()  # the heartbeat saw Redis answer: the recovery tries now
        self._marker: str | None = None  # the data marker Redis had when this process looked
        self._restoring: asyncio.Task[None] | None = None
        self._restore_lock = asyncio.Lock()
        self._rebased = asyncio.Event()  # clear while copies are being written back (above)
        self._rebased.set()
        self.available = False
        self.reached = False  # Redis answered at least once since the start (for /healthz)
        # Redis answered the last heartbeat or command (for /healthz). Not `available`: after
        # an outage or a loss of its data, writes wait a moment for the write-back while Redis
        # is already up.
        self.answering = False
        self.failures = 0  # Redis commands that failed, for /metrics
        self.conflicts = 0  # writes another instance got in before, for /metrics
        self.data_losses = 0  # times Redis was found without our data, for /metrics
        self.on_crash: Callable[[str], None] = lambda name: None  # a task's bug, for /metrics
        self.instances.listeners.append(self)

    @property
    def persistent(self) -> bool:
        return True

    @property
    def held(self) -> int:
        """Sessions changed while Redis was away and not yet written."""
        return len(self._dirty)

    async def start(self) -> None:
        try:
            await self.ping()
        except (RedisError, OSError):
            return
        self.available = self.reached = self.answering = True
        log.info("Redis connected successfully")

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer
        for task in (self._recovery, self._restoring):
            if task is not None:
                await tasks.stop(task)
        if self._dirty:
            with contextlib.suppress(RedisError, OSError):
                await self._flush()
        if self._dirty:
            log.error("Shutting down with %d session changes not written to Redis", self.held)
        if self._lane is not None:
            await self._lane.close()
        await self._redis.aclose()

    async def _fetch(self, token: str) -> Session | None:
        if not self.available and not self.answering:
            raise StoreUnavailable
        try:
            raw = await self._redis.get(keys.session(token))
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise StoreUnavailable from exc
        if raw is None:
            if not self._rebased.is_set():
                # Redis lost its data a moment ago: the record may not be written back yet
                # (by whichever instance holds it). Not "no such session": try again shortly.
                raise StoreUnavailable
            return None
        session = self._decode(token, raw if isinstance(raw, bytes) else raw.encode())
        if session is not None:
            log.info("Session restored from Redis: %s", token_ref(token))
        return session

    async def _refresh(self, token: str) -> None:
        """Redis answers again but this instance still holds its changes (the moment after an
        outage, or the write-back after a loss of data): a change is held on the newer record
        if another instance wrote one meanwhile (more writes), so what the event answers is
        not older than what Redis already holds. Never an older copy: that would undo writes
        of this instance that the write-back puts back."""
        try:
            raw = await self._redis.get(keys.session(token))
        except (RedisError, OSError):
            return
        if raw is None:
            return
        raw = raw if isinstance(raw, bytes) else raw.encode()
        seen = self._seen.get(token)
        mine = seen[1] if seen is not None else self._sessions.get(token)
        try:
            theirs = decode_record(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if mine is None or theirs.revision > mine.revision:
            self._remake(token, raw)

    def _decode(self, token: str, raw: bytes) -> Session | None:
        """A record read from Redis, remembered as seen unless a newer one is (another load)."""
        try:
            session = decode_record(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("Unreadable record for session %s: %s", token_ref(token), exc)
            return None
        self._seen.setdefault(token, (raw, session))
        return live_sockets(session, self._is_live)

    def create_call(self, token: str, session: Session) -> tuple[str, bytes, Session] | None:
        if (
            not self.available
            or not self._rebased.is_set()
            or token in self._sessions
            or deadlines(session, self._clock())  # a new pairing has none to schedule
        ):
            return None
        # Its first write, counted as the group commit counts it (Session.revision).
        written = replace(session, revision=session.revision + 1)
        return keys.session(token), _encode(written), written

    def created(self, token: str, raw: bytes, session: Session) -> None:
        super().created(token, raw, session)
        self._seen[token] = (raw, session)
        self._synced[token] = {}

    async def discard(self, token: str) -> None:
        await super().discard(token)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(keys.session(token))

    async def _apply(self, token: str, op: _Op[Any]) -> bool:
        if op.checked and not self.available:
            # A copy not checked against Redis (away, or its data being written back): what
            # the change decides could be told on a stale record.
            raise StoreUnavailable
        if not self.available and self.answering:
            await self._refresh(token)
        current = self._sessions.get(token)
        if op.apply(current, self._is_live) is not current and op.session is not None:
            self._remember(token, op.session)
        ops = self._ops.setdefault(token, [])
        ops.append(op)
        if len(ops) > MAX_HELD_OPS and ops[0].done:
            # A long outage: keep the newest changes; the record is then written as it is.
            del ops[0]
            self._forced.add(token)
        while not op.done:
            if not self.available:
                self._dirty.add(token)
                op.done = True  # held: written by the recovery
                break
            self._pending.add(token)
            await self._commit_soon()  # a Round: a cancelled writer cancels nobody else's
        return op.session is not None

    def _commit_soon(self) -> asyncio.Future[None]:
        """The next round of the group commit (started if none runs), to wait on."""
        if self._committer is None:
            self._batch = Round(loop=tasks.running_loop())
            self._committer = asyncio.create_task(self._commit(), name="redis-commit")
        assert self._batch is not None
        return self._batch

    async def _commit(self) -> None:
        """Write what changed, in rounds: changes that arrive while a write is under way share
        the next round (a group commit: one round trip for many events, each confirmed only
        after its write). A record another instance changed is made again and rewritten."""
        try:
            while self._pending:
                tokens, self._pending = self._pending, set()
                done, self._batch = self._batch, Round(loop=tasks.running_loop())
                try:
                    if self.available:
                        self._pending.update(await self._write(tokens))
                    else:
                        # Held for the recovery: Redis is away, or answers again while the
                        # write-back is under way (nothing failed: it still answers).
                        self._hold(tokens)
                        self._recover_soon()
                except (RedisError, OSError) as exc:
                    self._hold(tokens)
                    self._lost(exc)
                except Exception as exc:
                    # A bug: its writers must still answer (held, like an outage), and it must
                    # be seen. The recovery tries again with a backoff.
                    log.exception("Group commit failed: %d sessions held", len(tokens))
                    self.on_crash("redis-commit")
                    self._hold(tokens)
                    self._lost(exc)
                finally:
                    if done is not None:
                        done.set_result(None)
        finally:
            # No await since the loop's last check: nobody is waiting on the fresh future.
            self._batch = None
            self._committer = None

    def _hold(self, tokens: Collection[str]) -> None:
        """The write failed: the changes are held (their events may answer), for the recovery."""
        for token in tokens:
            ops = self._ops.get(token)
            if ops:
                self._dirty.add(token)
                for op in ops:
                    op.done = True

    async def _write(self, tokens: Collection[str]) -> set[str]:
        """Write the newest state of each token, and its deadlines where they changed, in one
        atomic script call (one reply to parse, however many records). Returns the tokens that
        another instance changed first: made again on the newer record, to be written again."""
        await self._rebased.wait()
        async with self._writing:
            return await self._write_batch(tokens)

    async def _write_batch(self, tokens: Collection[str]) -> set[str]:
        now = self._clock()
        batch: list[tuple[str, Session, bytes | None, int]] = []
        record_keys: list[str] = [keys.DEADLINES]
        args: list[str | bytes | int] = [keys.SESSION_TTL_SECONDS]
        synced: dict[str, dict[str, int]] = {}
        for token in tokens:
            session = self._sessions.get(token)
            if session is None:
                for op in self._ops.pop(token, ()):
                    op.done = True  # forgotten meanwhile: nothing to write
                self._dirty.discard(token)
                continue
            seen = self._seen.get(token)
            expected = ANY if token in self._forced else (seen[0] if seen else ABSENT)
            if token in self._gone:
                expected = older_than(session.revision)
            if seen is not None and seen[1] is session:
                raw = None  # nothing new to write: only check that the record is as seen
                due: dict[str, int] | None = None
                args += [expected, UNCHANGED] + [UNCHANGED] * (2 * len(KINDS))
            else:
                # One more write of the record: the cache holds the counted copy (no await
                # since it was read, so no change is lost).
                base = seen[1].revision if seen is not None else session.revision
                session = self._sessions[token] = replace(session, revision=base + 1)
                raw = _encode(session)
                due = deadlines(session, now)
                unchanged = self._synced.get(token) == due
                args += [expected, raw]
                for kind in KINDS:
                    when = due.get(kind)
                    args += [member(kind, token), UNCHANGED if unchanged else (when or REMOVE)]
            record_keys.append(keys.session(token))
            batch.append((token, session, raw, len(self._ops.get(token, ()))))
            if due is not None:
                synced[token] = due
        if not batch:
            return set()
        reply = await self._write_script(keys=record_keys, args=args)
        conflicts = {int(reply[i]) - 1: reply[i + 1] for i in range(0, len(reply), 2)}
        again: set[str] = set()
        for position, (token, session, raw, written) in enumerate(batch):
            if position in conflicts:
                self.conflicts += 1
                self._remake(token, conflicts[position])
                again.add(token)
                continue
            if raw is not None:
                self._seen[token] = (raw, session)
            if token in synced:
                self._synced[token] = synced[token]
            self._forced.discard(token)
            self._gone.discard(token)
            ops = self._ops.get(token, [])
            for op in ops[:written]:
                op.done = True
            del ops[:written]
            if not ops:
                # Every change is written (each change of the cache comes with an op).
                self._ops.pop(token, None)
                self._dirty.discard(token)
        return again

    def _remake(self, token: str, raw: bytes) -> None:
        """Another instance changed the record: cache theirs, and make our changes on it.

        A record that is gone from Redis (lost by a Redis restart without persistence) is
        written again as this process holds it: confirmed changes are not given up.
        """
        self._synced.pop(token, None)
        self._seen.pop(token, None)
        self._gone.discard(token)
        if not raw:
            # Unless another instance wrote back a newer copy meanwhile (see older_than).
            log.warning("Session %s was gone from Redis: writing it again", token_ref(token))
            self._gone.add(token)
            return
        session = self._decode(token, raw)
        if session is None:
            self._forced.add(token)  # unreadable: overwritten with what this process holds
            return
        for op in self._ops.get(token, ()):
            session = op.apply(session, self._is_live)
        assert session is not None
        self._remember(token, session)

    async def ping(self) -> None:
        """One PING to Redis; a failure marks Redis away, then is raised."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise

    async def probe(self) -> None:
        """One PING to Redis that changes nothing (for /metrics: a scrape observes, never acts)."""
        await self._redis.ping()

    def beat_ok(self, marker: str) -> None:
        """The heartbeat went through: Redis answers; a new data marker means it lost its data."""
        self.reached = self.answering = True
        if not self.available:
            self._wake.set()  # the recovery need not wait out its backoff
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker and (self._restoring is None or self._restoring.done()):
            self._restoring = asyncio.create_task(self._restore(marker), name="redis-restore")

    def beat_failed(self, exc: BaseException) -> None:
        """The heartbeat failed or took too long: Redis is away (or frozen) even if nobody
        else asked it anything: answer from memory and hold changes until it is back."""
        self.answering = False
        if self.available or self._recovery is None:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        self.failures += 1
        if self.available or self._recovery is None:
            if self.reached:
                log.error(
                    "Redis unavailable at %s (%s): serving from memory, changes are held until "
                    "it is back",
                    where(self._redis),
                    cause(exc),
                )
            else:
                log.error(
                    "Redis unavailable at %s, never reached since the start (%s): serving from "
                    "memory, /healthz answers 503 until it answers",
                    where(self._redis),
                    cause(exc),
                )
        self.available = self.answering = False
        self._recover_soon()

    def _recover_soon(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="redis-recovery")

    async def _recover(self) -> None:
        delay = 0.1
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            delay = min(delay * 2, 5.0)
            try:
                await self._redis.ping()
                self.answering = self.reached = True
                await self._lost_data()
                written = await self._flush()
            except (RedisError, OSError) as exc:
                self.answering = False
                log.debug("Redis still unavailable: %s", cause(exc))
                continue
            except Exception:
                log.exception("Writing the held sessions failed: trying again")
                self.on_crash("redis-recovery")
                continue
            if not self._dirty:
                # No await between the check and the switch: no change can slip past the flush.
                self.available = self.reached = self.answering = True
                log.info("Redis connected successfully (recovered, wrote %d held)", written)
                return

    async def _restore(self, marker: str | None) -> None:
        """Redis lost its data (restarted without persistence, flushed): write back every
        session and deadline held here, as last written (the changes not yet written follow,
        made on the newest copy). Until it succeeds the marker stays unadopted, so the next
        heartbeat tries again."""
        async with self._restore_lock:
            if marker is not None and marker == self._marker:
                return  # done meanwhile (the heartbeat and the recovery both saw it)
            self._rebased.clear()
            try:
                await self._redis.set(keys.DATA_REBASE, "1", px=REBASE_CLAIMS_MS, nx=True)
                sessions, due = await self.write_back()
            except (RedisError, OSError) as exc:
                log.warning(
                    "Redis lost its data; writing it back failed (%s): retrying", cause(exc)
                )
                return
            except Exception:
                log.exception("Redis lost its data; writing it back failed: retrying")
                self.on_crash("redis-restore")
                return
            finally:
                if not self._rebased.is_set():
                    asyncio.get_running_loop().call_later(REBASE_SECONDS, self._rebased.set)
            self._marker = marker
            self.data_losses += 1
            log.warning(
                "Redis lost its data: wrote back %d sessions and %d deadlines", sessions, due
            )

    async def _lost_data(self) -> bool:
        """Whether Redis lost its data since this instance last looked (for the recovery: the
        held changes go after the write-back, never before it)."""
        raw = await self._redis.get(keys.DATA_MARKER)
        marker = raw.decode() if isinstance(raw, bytes) else raw
        if self._marker is None or marker == self._marker:
            return False
        await self._restore(marker)
        return True

    async def write_back(self) -> tuple[int, int]:
        """Write every record held here as it was last written (a change made here since, e.g.
        while Redis was away, is made again on the newest copy afterwards), and its deadlines,
        where Redis has no record or an older copy (fewer writes: see Session.revision): of
        several instances doing it at once the newest copy wins, and a change an event made
        since is never overwritten. Returns how many records and deadlines were written."""
        sessions = deadline_count = 0
        async with self._writing:
            tokens = list(self._sessions)
            for start in range(0, len(tokens), WRITE_BACK_BATCH):
                batch = [
                    (token, seen[1] if (seen := self._seen.get(token)) else session)
                    for token in tokens[start : start + WRITE_BACK_BATCH]
                    if (session := self._sessions.get(token)) is not None
                ]
                written, due = await self._write_back(batch)
                sessions += written
                deadline_count += due
        return sessions, deadline_count

    async def _write_back(self, batch: list[tuple[str, Session]]) -> tuple[int, int]:
        if not batch:
            return 0, 0
        now = self._clock()
        record_keys: list[str] = [keys.DEADLINES]
        args: list[str | bytes | int] = [keys.SESSION_TTL_SECONDS]
        encoded: list[tuple[bytes, dict[str, int]]] = []
        for token, session in batch:
            seen = self._seen.get(token)
            raw = seen[0] if seen is not None and seen[1] is session else _encode(session)
            due = deadlines(session, now)
            encoded.append((raw, due))
            record_keys.append(keys.session(token))
            args += [older_than(session.revision), raw]
            for kind in KINDS:
                args += [member(kind, token), due.get(kind) or REMOVE]
        reply = await self._write_script(keys=record_keys, args=args)
        conflicts = {int(reply[i]) - 1: reply[i + 1] for i in range(0, len(reply), 2)}
        sessions = deadline_count = 0
        for position, ((token, session), (raw, due)) in enumerate(zip(batch, encoded, strict=True)):
            if position in conflicts:
                # Written first by another instance or by an event since: theirs is kept, and
                # any change of ours not yet written is made again on it.
                self._remake(token, conflicts[position])
                if self._ops.get(token):
                    self._pending.add(token)
                    self._commit_soon()
                continue
            self._seen[token] = (raw, session)
            self._synced[token] = due
            if self._ops.get(token):
                self._pending.add(token)  # made on the copy written back, once others had theirs
                self._commit_soon()
            sessions += 1
            deadline_count += len(due)
        return sessions, deadline_count

    async def _flush(self) -> int:
        """Write every held session; what changes during the write stays held for the next round."""
        written = 0
        while self._dirty:
            batch = list(self._dirty)[:500]
            await self._write(batch)
            written += len(batch)
        return written

    def sweep(self) -> int:
        """Besides expiry, drop idle records with no socket here: Redis holds them."""
        gone = super().sweep()
        if not self.available:
            return gone
        limit = self._clock() - IDLE_EVICT_MS
        idle = [
            token
            for token, at in self._used.items()
            if at < limit
            and token not in self._dirty
            and token not in self._ops
            and not self._has_local_sockets(token)
        ]
        for token in idle:
            self._forget(token)
        return gone + len(idle)

    def _forget(self, token: str) -> None:
        super()._forget(token)
        self._synced.pop(token, None)
        self._seen.pop(token, None)
        self._gone.discard(token)

    def _has_local_sockets(self, token: str) -> bool:
        session = self._sessions.get(token)
        return session is not None and (
            (session.tracked_socket_id is not None and self._is_local(session.tracked_socket_id))
            or any(self._is_local(sid) for sid in session.tracker_socket_ids)
        )


class RedisStore(RedisPersistence, MemoryStore):
    """Sessions in memory, persisted in Redis."""


def where(redis: aioredis.Redis) -> str:
    """host:port/db (or the socket path) of a client, never its password."""
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def cause(exc: BaseException) -> str:
    """What is wrong, in words an operator can act on (redis-py's messages vary by version)."""
    text = str(exc)
    if isinstance(exc, AuthenticationError):
        if "NOAUTH" in text or "HELLO must be called" in text or "Authentication required" in text:
            return "authentication required: REDIS_URL has no password"
        return "authentication failed: wrong user or password in REDIS_URL"
    if isinstance(exc, ResponseError) and "DB index" in text:
        return "DB index out of range: REDIS_URL names a database this Redis does not have"
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "no answer in time"
    context = exc.__cause__ or exc.__context__
    if isinstance(context, ConnectionRefusedError) or "Error 111" in text:
        return "connection refused"
    if isinstance(context, socket.gaierror):
        return f"host not found ({context.strerror})"
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _driver_info() -> dict[str, Any]:
    """redis-py 7 and later read their own package metadata (importlib.metadata: files and an
    email parser) for every new connection unless given this, made once: 4% of the CPU of
    pairing while the pool grew. Before 7 the version was read once, at import."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}


def connect(url: str, *, timeout: float, max_connections: int) -> aioredis.Redis:
    """A Redis client that waits for a free connection and retries once on a dropped one."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **_driver_info(),
    )
    # from_pool: closing the client closes the pool (and its sockets) too.
    return aioredis.Redis.from_pool(pool)
