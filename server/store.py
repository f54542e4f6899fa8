"""Session storage in this process: every change a pure function made on the newest record.

Without Redis this is the whole store. With Redis (persistence.py) memory caches what Redis
holds, every event is still answered while Redis is away, and changes reach Redis by a
compare-and-set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import msgspec

from . import keys
from .clock import Clock
from .deadlines import MemoryDeadlines, RedisDeadlines
from .models import Session
from .rules import ALERT, REMINDER, deadlines, live_sockets

log = logging.getLogger(__name__)

T = TypeVar("T")
Change = Callable[[Session], tuple[Session, T]]


def change_with(rule: Callable[..., Session], *args: Any) -> Change[None]:
    """A rule that returns the new record (rules.py), as a change for `update`."""

    def change(session: Session) -> tuple[Session, None]:
        return rule(session, *args), None

    return change


_encode = msgspec.json.Encoder().encode
_decode_strict = msgspec.json.Decoder(Session).decode
IDLE_EVICT_MS: Final = 10 * 60_000
KINDS: Final = (ALERT, REMINDER)
UNCHANGED: Final = "-"
REMOVE: Final = ""


class StoreUnavailable(Exception):
    """A session is not in memory and its storage cannot be asked right now."""


def decode_record(raw: bytes | str) -> Session:
    """Read a stored record, tolerating what the Node server may have written (e.g. "5")."""
    try:
        return _decode_strict(raw)
    except msgspec.ValidationError:
        return msgspec.json.decode(raw, type=Session, strict=False)


def _unchanged(session: Session) -> tuple[Session, None]:
    return session, None


class _Op(Generic[T]):
    """One change to a session: kept until it is in Redis, to be made again on a newer record
    if another instance changed the session first. So a change must be a pure function of the
    record that gives the same record when made twice (every rule in rules.py does)."""

    __slots__ = ("change", "checked", "create", "done", "result", "session")

    def __init__(
        self,
        change: Change[T] | None = None,
        create: Session | None = None,
        *,
        checked: bool = False,
    ) -> None:
        self.change = change
        self.create = create
        # Made only on the record as Redis holds it (never held on a copy while Redis is
        # away): what it decides is told to people at once (an alert, a reminder).
        self.checked = checked
        self.session: Session | None = None
        self.result: T | None = None
        self.done = False  # its event may answer: written, held while Redis is away, or gone

    def apply(
        self, session: Session | None, is_live: Callable[[str], bool] | None
    ) -> Session | None:
        """Make the change on `session` (None: there is none); returns the new record."""
        if self.create is not None:
            self.session = self.create
        elif session is None or self.change is None:
            self.session = None
        else:
            if is_live is not None:
                session = live_sockets(session, is_live)
            self.session, self.result = self.change(session)
        return self.session


class MemoryStore:
    """Sessions in this process, expiring like their Redis records (30 days after a write)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._written: dict[str, int] = {}
        # Per token: when an event, the scheduler or a route last asked for it (read or write).
        # A record read and never changed here is as much in memory as one written here.
        self._used: dict[str, int] = {}
        self.deadlines: MemoryDeadlines | RedisDeadlines = MemoryDeadlines()
        # Whether a change is written at once (with Redis: not while it is away or its data is
        # being written back; changes are then held).
        self.available = True
        self.answering = True  # (with Redis: whether it answered the last heartbeat or command)

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

    def records(self) -> list[tuple[str, Session]]:
        """Every record held here (a snapshot)."""
        return list(self._sessions.items())

    async def load(self, token: str) -> Session | None:
        session = self._sessions.get(token)
        if session is not None:
            self._used[token] = self._clock()
            return session
        fetched = await self._fetch(token)
        if fetched is None:
            return None
        # Another event may have loaded (and changed) it while we waited: theirs wins.
        self._used[token] = self._clock()
        return self._sessions.setdefault(token, fetched)

    async def create(self, token: str, session: Session) -> None:
        await self._apply(token, _Op(create=session))

    async def update(
        self, token: str, change: Change[T], *, checked: bool = False
    ) -> tuple[Session, T] | None:
        """Apply a pure change to the current record and persist it; None if there is no session.

        The change runs on the newest record with no await in between, so concurrent events in
        this process never lose each other's updates (nor, with Redis, those of other instances:
        see RedisPersistence). `checked`: the change is made on the record as Redis holds it or
        not at all (StoreUnavailable), never held on a copy that may be stale.
        """
        if await self.load(token) is None:
            return None
        current = self._sessions.get(token)
        if current is None:
            return None
        op: _Op[T] = _Op(change, checked=checked)
        if not await self._apply(token, op):
            return None
        assert op.session is not None
        return op.session, op.result  # type: ignore[return-value]  # set with the session

    async def current(self, token: str, *, checked: bool = False) -> Session | None:
        """The record, checked against Redis (another instance may have changed it); while
        Redis is away the copy held here, unless `checked` (then StoreUnavailable)."""
        updated = await self.update(token, _unchanged, checked=checked)
        return updated[0] if updated is not None else None

    async def _apply(self, token: str, op: _Op[Any]) -> bool:
        """Make the change; False if the session is gone."""
        current = self._sessions.get(token)
        if op.apply(current, None) is not current and op.session is not None:
            self._remember(token, op.session)
        return op.session is not None

    def create_call(self, token: str, session: Session) -> tuple[str, bytes, Session] | None:
        """For a script that writes a new record in the same call as an event's other work:
        its key, its JSON and the record as written. None when writes do not go straight to
        Redis now (no Redis, Redis away, or its data being written back)."""
        return None

    def created(self, token: str, raw: bytes, session: Session) -> None:
        """A script wrote the new record (create_call): held here as Redis holds it."""
        self._remember(token, session)

    async def discard(self, token: str) -> None:
        """Forget a session nobody can know (made for a pairing that another one won)."""
        self._forget(token)

    def _remember(self, token: str, session: Session) -> None:
        self._sessions[token] = session
        self._written[token] = self._used[token] = self._clock()
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
        self._used.pop(token, None)

    async def _fetch(self, token: str) -> Session | None:
        return None
