"""Redis persistence: a mixin over MemoryStore that reads records through from Redis and writes
them back with a compare-and-set, so that instances sharing one Redis never lose each other's
changes; and the Redis client they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

import msgspec
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys, tasks
from .clock import Clock
from .deadlines import RedisDeadlines, member
from .instances import Instances
from .logs import token_ref
from .models import Session
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

# KEYS: the deadlines set, then one record key per session. ARGV: the TTL, then per session the
# record as this process last saw it in Redis ("" none, "*" whatever is there), the record to
# write ("-" none: only check that it is still as seen), and per kind of deadline the member and
# its due time ("" removes it, "-" leaves it). A record that is not as seen is not written: its
# position and what is there now ("" none) are returned, for the change to be made again on it.
_WRITE: Final = f"""
local per = 2 + 2 * {len(KINDS)}
local conflicts = {{}}
for i = 2, #KEYS do
  local a = 2 + (i - 2) * per
  local current = redis.call('GET', KEYS[i]) or ''
  if ARGV[a] ~= '*' and current ~= ARGV[a] then
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
    ) -> None:
        super().__init__(clock)
        self._redis = redis
        # Socket ids count only while the instance that made them is alive.
        self.instances = instances if instances is not None else Instances(clock)
        self._is_live = self.instances.is_live
        self._is_local = self.instances.is_local
        self.deadlines = RedisDeadlines(redis)
        self._write_script = redis.register_script(_WRITE)
        # Per token: the record as last read from or written to Redis, and what it decodes to.
        self._seen: dict[str, tuple[bytes, Session]] = {}
        # Per token: the changes made in memory and not yet written, oldest first.
        self._ops: dict[str, list[_Op[Any]]] = {}
        # The deadlines last written per token: unchanged ones are not written again.
        self._synced: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        # Tokens whose changes outgrew MAX_HELD_OPS while Redis was away: written as they are.
        self._forced: set[str] = set()
        # Group commit: tokens changed since the last write, the future their writers wait on,
        # and the task that writes them.
        self._pending: set[str] = set()
        self._batch: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.available = False
        self.failures = 0  # Redis commands that failed, for /metrics
        self.conflicts = 0  # writes another instance got in before, for /metrics

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
        self.available = True
        log.info("Redis connected successfully")

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer
        if self._recovery is not None:
            await tasks.stop(self._recovery)
        if self._dirty:
            with contextlib.suppress(RedisError, OSError):
                await self._flush()
        if self._dirty:
            log.error("Shutting down with %d session changes not written to Redis", self.held)
        await self._redis.aclose()

    async def _fetch(self, token: str) -> Session | None:
        if not self.available:
            raise StoreUnavailable
        try:
            raw = await self._redis.get(keys.session(token))
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise StoreUnavailable from exc
        if raw is None:
            return None
        session = self._decode(token, raw if isinstance(raw, bytes) else raw.encode())
        if session is not None:
            log.info("Session restored from Redis: %s", token_ref(token))
        return session

    def _decode(self, token: str, raw: bytes) -> Session | None:
        """A record read from Redis, remembered as seen unless a newer one is (another load)."""
        try:
            session = decode_record(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("Unreadable record for session %s: %s", token_ref(token), exc)
            return None
        self._seen.setdefault(token, (raw, session))
        return live_sockets(session, self._is_live)

    async def discard(self, token: str) -> None:
        await super().discard(token)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(keys.session(token))

    async def _apply(self, token: str, op: _Op[Any]) -> bool:
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
            if self._committer is None:
                self._batch = asyncio.get_running_loop().create_future()
                self._committer = asyncio.create_task(self._commit(), name="redis-commit")
            assert self._batch is not None
            # Shielded: a writer that is cancelled must not cancel everyone's batch.
            await asyncio.shield(self._batch)
        return op.session is not None

    async def _commit(self) -> None:
        """Write what changed, in rounds: changes that arrive while a write is under way share
        the next round (a group commit: one round trip for many events, each confirmed only
        after its write). A record another instance changed is made again and rewritten."""
        try:
            while self._pending:
                tokens, self._pending = self._pending, set()
                done, self._batch = self._batch, asyncio.get_running_loop().create_future()
                try:
                    if not self.available:
                        raise RedisConnectionError("Redis went away before the write")
                    self._pending.update(await self._write(tokens))
                except (RedisError, OSError) as exc:
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
            if seen is not None and seen[1] is session:
                raw = None  # nothing new to write: only check that the record is as seen
                due: dict[str, int] | None = None
                args += [expected, UNCHANGED] + [UNCHANGED] * (2 * len(KINDS))
            else:
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
        if not raw:
            log.warning("Session %s was gone from Redis: writing it again", token_ref(token))
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
        """One PING to Redis (for /metrics); a failure marks Redis away, then is raised."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise

    def _lost(self, exc: BaseException) -> None:
        self.failures += 1
        if self.available or self._recovery is None:
            log.error(
                "Redis unavailable (%s): serving from memory, changes are held until it is back",
                exc.__class__.__name__,
            )
        self.available = False
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="redis-recovery")

    async def _recover(self) -> None:
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self._redis.ping()
                written = await self._flush()
            except (RedisError, OSError) as exc:
                log.debug("Redis still unavailable: %s", exc)
                continue
            if not self._dirty:
                # No await between the check and the switch: no change can slip past the flush.
                self.available = True
                log.info("Redis connected successfully (recovered, wrote %d held)", written)
                return

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

    def _has_local_sockets(self, token: str) -> bool:
        session = self._sessions.get(token)
        return session is not None and (
            (session.tracked_socket_id is not None and self._is_local(session.tracked_socket_id))
            or any(self._is_local(sid) for sid in session.tracker_socket_ids)
        )


class RedisStore(RedisPersistence, MemoryStore):
    """Sessions in memory, persisted in Redis."""


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
    )
    # from_pool: closing the client closes the pool (and its sockets) too.
    return aioredis.Redis.from_pool(pool)
