"""Pairing codes: who may register or track a code, and the in-memory book that holds them."""

from __future__ import annotations

import enum
from typing import Final

from msgspec.structs import replace

from .models import PendingCode

CODE_TTL_MS: Final = 5 * 60_000


class Claim(enum.Enum):
    FRESH = "fresh"  # a new pending code
    RESUMED = "resumed"  # the owner takes back its paired code, and with it the session
    IN_USE = "in use"  # another socket owns it, or owned it and this one is not provably it


class Track(enum.Enum):
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    PAIR = "pair"


def retired(entry: PendingCode, now: int, grace_ms: int) -> bool:
    """A paired code stays claimable by its owner until it has been gone past the grace."""
    return (
        entry.tracked_sid is None and entry.left_at is not None and now - entry.left_at > grace_ms
    )


def expired(entry: PendingCode, now: int) -> bool:
    return not entry.paired and now > entry.expires_at


def free(entry: PendingCode | None, now: int, grace_ms: int) -> bool:
    """Nobody holds the code: anyone may register it."""
    return entry is None or expired(entry, now) or (entry.paired and retired(entry, now, grace_ms))


def contested(entry: PendingCode | None, sid: str, now: int, grace_ms: int) -> bool:
    """registerCode of a code somebody holds, by a socket that is not its owner: an attempt
    at someone else's code unless it proves to be the owner back (counted before deciding)."""
    return not free(entry, now, grace_ms) and entry is not None and entry.tracked_sid != sid


def register(
    entry: PendingCode | None, code: str, sid: str, address: str, now: int, grace_ms: int
) -> tuple[Claim, PendingCode]:
    """registerCode: decide, and return the entry as it should be stored afterwards.

    Provably the same app (SECURITY.md): the owning socket itself, or, once the owner has
    left, a socket from the owner's client address, within the grace time (paired) or the
    code's five minutes (pending). A socket id is unguessable; an address is what the app
    cannot help keeping across a dropped connection on the same network.
    """
    fresh = PendingCode(code=code, tracked_sid=sid, expires_at=now + CODE_TTL_MS, address=address)
    if entry is None or free(entry, now, grace_ms):
        return Claim.FRESH, fresh
    if entry.tracked_sid != sid and (entry.tracked_sid is not None or entry.address != address):
        return Claim.IN_USE, entry
    if not entry.paired:
        # The owner again, or back from its address: registered afresh.
        return Claim.FRESH, fresh
    return Claim.RESUMED, replace(
        entry, tracked_sid=sid, left_at=None, expires_at=now + CODE_TTL_MS, address=address
    )


def track(entry: PendingCode | None, now: int, grace_ms: int) -> Track:
    if entry is None or (entry.paired and retired(entry, now, grace_ms)):
        return Track.UNKNOWN
    if expired(entry, now):
        return Track.EXPIRED
    return Track.PAIR


class CodeBook:
    """Codes of this process, indexed by code, by session token and by owning socket."""

    def __init__(self) -> None:
        self._codes: dict[str, PendingCode] = {}
        self._by_token: dict[str, str] = {}
        self._by_sid: dict[str, set[str]] = {}
        self._pending_by_address: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def get(self, code: str) -> PendingCode | None:
        return self._codes.get(code)

    def entries(self) -> list[PendingCode]:
        return list(self._codes.values())

    def for_token(self, token: str) -> PendingCode | None:
        code = self._by_token.get(token)
        return self._codes.get(code) if code is not None else None

    def put(self, entry: PendingCode) -> None:
        self.delete(entry.code)
        self._codes[entry.code] = entry
        if entry.session_token is not None:
            self._by_token[entry.session_token] = entry.code
        if entry.tracked_sid is not None:
            self._by_sid.setdefault(entry.tracked_sid, set()).add(entry.code)
        if not entry.paired and entry.address is not None:
            self._pending_by_address.setdefault(entry.address, set()).add(entry.code)

    def delete(self, code: str) -> None:
        entry = self._codes.pop(code, None)
        if entry is None:
            return
        if entry.session_token is not None:
            self._by_token.pop(entry.session_token, None)
        if entry.tracked_sid is not None:
            codes = self._by_sid.get(entry.tracked_sid, set())
            codes.discard(code)
            if not codes:
                self._by_sid.pop(entry.tracked_sid, None)
        if not entry.paired and entry.address is not None:
            pending = self._pending_by_address.get(entry.address, set())
            pending.discard(code)
            if not pending:
                self._pending_by_address.pop(entry.address, None)

    def pending_from(self, address: str, now: int) -> int:
        """Unpaired codes registered from `address` that have not expired."""
        codes = self._pending_by_address.get(address, ())
        return sum(1 for code in codes if not expired(self._codes[code], now))

    def owned_by(self, sid: str) -> list[PendingCode]:
        return [self._codes[code] for code in self._by_sid.get(sid, ())]

    def release(self, sid: str, now: int) -> None:
        """The socket is gone: its codes keep their state but no longer have an owner."""
        for entry in self.owned_by(sid):
            self.put(replace(entry, tracked_sid=None, left_at=now))

    def sweep(self, now: int, grace_ms: int) -> int:
        """Forget expired pending codes and retired paired ones; returns how many went."""
        gone = [
            code
            for code, entry in self._codes.items()
            if expired(entry, now) or (entry.paired and retired(entry, now, grace_ms))
        ]
        for code in gone:
            self.delete(code)
        return len(gone)
