"""Session storage: the in-memory store, and Redis persistence as a mixin over it.

Memory is always the first truth for this process, so every event is answered even while Redis is
away. With Redis, every change is written under `session:<token>`; a write that fails is held
(the token is marked dirty) and written by the background recovery once Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from .clock import Clock
from .deadlines import MemoryDeadlines, RedisDeadlines, member
from .logs import token_ref
from .models import Session
from .rules import ALERT, REMINDER, deadlines, fresh_from_storage

log = logging.getLogger(__name__)

T = TypeVar("T")
Change = Callable[[Session], tuple[Session, T]]

_encode = msgspec.json.Encoder().encode
_decode_strict = msgspec.json.Decoder(Session).decode
IDLE_EVICT_MS: Final = 10 * 60_000
KINDS: Final = (ALERT, REMINDER)
UNCHANGED: Final = "-"
REMOVE: Final = ""

# KEYS: the deadlines set, then one record key per session. ARGV: the TTL, then per session its
# JSON and, per kind of deadline, the member and its due time ("" removes it, "-" leaves it).
_WRITE: Final = f"""
local per = 1 + 2 * {len(KINDS)}
for i = 2, #KEYS do
  local a = 2 + (i - 2) * per
  redis.call('SET', KEYS[i], ARGV[a], 'EX', ARGV[1])
  for k = a + 1, a + per - 1, 2 do
    if ARGV[k + 1] == '' then
      redis.call('ZREM', KEYS[1], ARGV[k])
    elseif ARGV[k + 1] ~= '-' then
      redis.call('ZADD', KEYS[1], ARGV[k + 1], ARGV[k])
    end
  end
end
return #KEYS - 1
"""


class StoreUnavailable(Exception):
    """A session is not in memory and its storage cannot be asked right now."""


def decode_record(raw: bytes | str) -> Session:
    """Read a stored record, tolerating what the Node server may have written (e.g. "5")."""
    try:
        return _decode_strict(raw)
    except msgspec.ValidationError:
        return msgspec.json.decode(raw, type=Session, strict=False)


class MemoryStore:
    """Sessions in this process, expiring like their Redis records (30 days after a write)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._written: dict[str, int] = {}
        self.deadlines: MemoryDeadlines | RedisDeadlines = MemoryDeadlines()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def persistent(self) -> bool:
        return False

    async def start(self) -> None:
        log.warning("REDIS_URL is not set: sessions are kept in memory only and lost on restart")

    async def close(self) -> None:
        pass

    def cached(self, token: str) -> Session | None:
        return self._sessions.get(token)

    async def load(self, token: str) -> Session | None:
        session = self._sessions.get(token)
        if session is not None:
            return session
        fetched = await self._fetch(token)
        if fetched is None:
            return None
        # Another event may have loaded (and changed) it while we waited: theirs wins.
        return self._sessions.setdefault(token, fetched)

    async def create(self, token: str, session: Session) -> None:
        self._remember(token, session)
        await self._persist(token)

    async def update(self, token: str, change: Change[T]) -> tuple[Session, T] | None:
        """Apply a pure change to the current record and persist it; None if there is no session.

        The change runs on the newest record with no await in between, so concurrent events in
        this process never lose each other's updates.
        """
        if await self.load(token) is None:
            return None
        current = self._sessions.get(token)
        if current is None:
            return None
        changed, result = change(current)
        if changed is not current:
            self._remember(token, changed)
            await self._persist(token)
        return changed, result

    def _remember(self, token: str, session: Session) -> None:
        self._sessions[token] = session
        self._written[token] = self._clock()
        if isinstance(self.deadlines, MemoryDeadlines):
            self.deadlines.set(token, deadlines(session, self._clock()), KINDS)

    def sweep(self) -> int:
        """Drop records past their 30-day expiry; returns how many went."""
        limit = self._clock() - keys.SESSION_TTL_SECONDS * 1000
        stale = [token for token, at in self._written.items() if at < limit]
        for token in stale:
            self._forget(token)
        return len(stale)

    def _forget(self, token: str) -> None:
        self._sessions.pop(token, None)
        self._written.pop(token, None)

    async def _fetch(self, token: str) -> Session | None:
        return None

    async def _persist(self, token: str) -> None:
        pass


if TYPE_CHECKING:
    _StoreBase = MemoryStore
else:
    _StoreBase = object


class RedisPersistence(_StoreBase):
    """Mixin over MemoryStore: records read through from and written through to Redis.

    A write that fails marks its token dirty; the recovery task writes the newest state of every
    dirty token once Redis answers again, so nothing confirmed while it was away is lost.
    """

    def __init__(self, clock: Clock, redis: aioredis.Redis) -> None:
        super().__init__(clock)
        self._redis = redis
        self.deadlines = RedisDeadlines(redis)
        self._write_script = redis.register_script(_WRITE)
        # The deadlines last written per token: unchanged ones are not written again.
        self._synced: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        # Group commit: tokens changed since the last write, the future their writers wait on,
        # and the task that writes them.
        self._pending: set[str] = set()
        self._batch: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.available = False
        self.failures = 0  # Redis commands that failed, for /metrics

    @property
    def persistent(self) -> bool:
        return True

    @property
    def held(self) -> int:
        """Sessions changed while Redis was away and not yet written."""
        return len(self._dirty)

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return
        self.available = True
        log.info("Redis connected successfully")

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
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
        try:
            session = fresh_from_storage(decode_record(raw))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("Unreadable record for session %s: %s", token_ref(token), exc)
            return None
        log.info("Session restored from Redis: %s", token_ref(token))
        return session

    async def _persist(self, token: str) -> None:
        """Return once the change is in Redis, or held while Redis is away.

        Changes that arrive while a write is under way share the next transaction (a group
        commit): one round trip for many events, and each is confirmed only after its write.
        """
        if not self.available:
            self._dirty.add(token)
            return
        self._pending.add(token)
        if self._committer is None:
            self._batch = asyncio.get_running_loop().create_future()
            self._committer = asyncio.create_task(self._commit(), name="redis-commit")
        assert self._batch is not None
        # Shielded: a writer that is cancelled must not cancel everyone's batch.
        await asyncio.shield(self._batch)

    async def _commit(self) -> None:
        try:
            while self._pending:
                tokens, self._pending = self._pending, set()
                done, self._batch = self._batch, asyncio.get_running_loop().create_future()
                try:
                    if not self.available:
                        raise RedisConnectionError("Redis went away before the write")
                    await self._write(tokens)
                except (RedisError, OSError) as exc:
                    self._dirty.update(tokens)
                    self._lost(exc)
                finally:
                    if done is not None:
                        done.set_result(None)
        finally:
            # No await since the loop's last check: nobody is waiting on the fresh future.
            self._batch = None
            self._committer = None

    async def _write(self, tokens: Collection[str]) -> dict[str, Session]:
        """Write the newest state of each token, and its deadlines where they changed, in one
        atomic script call (one reply to parse, however many records); returns what it wrote."""
        sessions = {t: s for t in tokens if (s := self._sessions.get(t)) is not None}
        if not sessions:
            return sessions
        now = self._clock()
        synced: dict[str, dict[str, int]] = {}
        record_keys: list[str] = [keys.DEADLINES]
        args: list[str | bytes | int] = [keys.SESSION_TTL_SECONDS]
        for token, session in sessions.items():
            due = synced[token] = deadlines(session, now)
            record_keys.append(keys.session(token))
            args.append(_encode(session))
            unchanged = self._synced.get(token) == due
            for kind in KINDS:
                when = due.get(kind)
                args += [member(kind, token), UNCHANGED if unchanged else (when or REMOVE)]
        await self._write_script(keys=record_keys, args=args)
        self._synced.update(synced)
        return sessions

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
            sessions = await self._write(batch)
            for token in batch:
                if self._sessions.get(token) is sessions.get(token):
                    self._dirty.discard(token)
            written += len(batch)
        return written

    def sweep(self) -> int:
        """Besides expiry, drop idle records with no connected socket: Redis holds them."""
        gone = super().sweep()
        if not self.available:
            return gone
        limit = self._clock() - IDLE_EVICT_MS
        idle = [
            token
            for token, at in self._written.items()
            if at < limit and token not in self._dirty and not self._has_sockets(token)
        ]
        for token in idle:
            self._forget(token)
        return gone + len(idle)

    def _forget(self, token: str) -> None:
        super()._forget(token)
        self._synced.pop(token, None)

    def _has_sockets(self, token: str) -> bool:
        session = self._sessions.get(token)
        return session is not None and (
            session.tracked_socket_id is not None or bool(session.tracker_socket_ids)
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
