"""msgspec Structs: the session record as the Node server stored it, and every inbound payload."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

MAX_TIMER_MINUTES: Final = 43_200  # 30 days: a record idle longer than that expires anyway

CODE_PATTERN: Final = r"^[1-9][0-9]{5}\Z"
Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]
TOKEN_PATTERN: Final = r"^[0-9a-f]{64}\Z"
Token = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN)]
Minutes = (
    Annotated[int, msgspec.Meta(gt=0, le=MAX_TIMER_MINUTES)]
    | Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMER_MINUTES)]
)
Role = Annotated[str, msgspec.Meta(max_length=32)]


class Session(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One pairing, stored as JSON under `session:<token>` with the Node server's field names.

    Numbers are typed `int | float` because the Node server stored whatever arithmetic gave it;
    this server always writes whole milliseconds.
    """

    tracked_socket_id: str | None = None
    tracker_socket_ids: tuple[str, ...] = ()
    last_check_in: int | float | None = None
    reminder_time_minutes: int | float | None = None
    alert_time_minutes: int | float | None = None
    reminder_time_end: int | float | None = None
    alert_time_end: int | float | None = None
    settings_configured: bool = False
    # Beyond the Node record: the time of a missed check-in not yet cleared by a new one.
    pending_alert: int | float | None = None
    # Beyond: the alertTimeEnd an alert was raised for (fired, or seen by getStatus). A tracker's
    # reconnect clears the pending alert (as Node did); this keeps that missed check-in from
    # being raised, and pushed to every tracker, again.
    alerted_for: int | float | None = None
    # Beyond: how many times the record was written. Writes are compare-and-set, so of two
    # copies the one with more writes is the newer: after Redis lost its data, the instance
    # holding the newest copy wins the write-back (the Node server ignores the field).
    revision: int = 0
    # Beyond: the code that paired it. The tracked app that proved the token (reconnectSession)
    # and registers this code again gets its session back, also when the code's own entry was
    # lost (Redis restarted empty after the instance that held it went away) or retired.
    code: str | None = None
    # Beyond: the client address that registered the code (limits.client_address), so that a
    # code written back from this record can go back to its app from there (SECURITY.md).
    code_address: str | None = None


class ReconnectSession(msgspec.Struct, frozen=True, rename="camel"):
    session_token: Token
    role: Role


class SetTimers(msgspec.Struct, frozen=True, rename="camel"):
    session_token: Token
    reminder_time_minutes: Minutes
    alert_time_minutes: Minutes


class GetStatus(msgspec.Struct, frozen=True, rename="camel"):
    session_token: Token


class CheckInObject(msgspec.Struct, frozen=True, rename="camel"):
    """checkIn takes the bare token; an object carrying it is accepted too."""

    session_token: Token


class PendingCode(msgspec.Struct, frozen=True, kw_only=True):
    """A registered code: pending until a tracker pairs, then linked to its session."""

    code: str
    tracked_sid: str | None
    expires_at: int
    session_token: str | None = None
    left_at: int | None = None  # when the tracked socket went away
    # The client address of the owner (limits.client_address): after the owner left, only a
    # socket from there may take the code back (SECURITY.md). None: written before it was kept.
    address: str | None = None

    @property
    def paired(self) -> bool:
        return self.session_token is not None
