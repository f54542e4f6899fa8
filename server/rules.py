"""The protocol's decisions as pure functions of (record, input, now); times in ms."""

from __future__ import annotations

import secrets
from typing import Any, Final

from msgspec.structs import replace

from .models import Session

MINUTE_MS: Final = 60_000


def new_token() -> str:
    """A session token: 32 random bytes as 64 lowercase hex characters."""
    return secrets.token_hex(32)


def _after(base: float, minutes: float) -> int:
    return round(base + minutes * MINUTE_MS)


def timers_armed(session: Session) -> bool:
    return (
        session.settings_configured
        and session.reminder_time_minutes is not None
        and session.alert_time_minutes is not None
    )


def check_in(session: Session, now: int) -> Session:
    """A sign of life: clears a pending alert and, when timers are set, restarts them from now."""
    if not timers_armed(session):
        return replace(session, last_check_in=now, pending_alert=None)
    assert session.reminder_time_minutes is not None and session.alert_time_minutes is not None
    return replace(
        session,
        last_check_in=now,
        pending_alert=None,
        reminder_time_end=_after(now, session.reminder_time_minutes),
        alert_time_end=_after(now, session.alert_time_minutes),
    )


def set_timers(session: Session, reminder: float, alert: float, now: int) -> Session:
    """Store both delays; the deadlines count from the last check-in, or from now without one."""
    base = session.last_check_in if session.last_check_in is not None else now
    return replace(
        session,
        reminder_time_minutes=reminder,
        alert_time_minutes=alert,
        reminder_time_end=_after(base, reminder),
        alert_time_end=_after(base, alert),
        settings_configured=True,
    )


def timers_payload(session: Session) -> dict[str, Any]:
    return {
        "reminderTimeMinutes": session.reminder_time_minutes,
        "alertTimeMinutes": session.alert_time_minutes,
        "reminderTimeEnd": session.reminder_time_end,
        "alertTimeEnd": session.alert_time_end,
    }


def alert_expired(session: Session, now: int) -> bool:
    """PROTOCOL.md's alertExpired: more than the alert delay has passed since the last check-in."""
    return (
        session.last_check_in is not None
        and bool(session.alert_time_minutes)
        and session.settings_configured
        and now - session.last_check_in > session.alert_time_minutes * MINUTE_MS  # type: ignore[operator]
    )


def observe_status(session: Session, now: int) -> tuple[Session, bool]:
    """getStatus: report alertExpired, and make the alert pending the first time it is seen."""
    expired = alert_expired(session, now)
    if expired and session.pending_alert is None:
        return replace(session, pending_alert=now), True
    return session, expired


def with_tracked(session: Session, sid: str) -> Session:
    return replace(session, tracked_socket_id=sid)


def with_tracker(session: Session, sid: str) -> Session:
    if sid in session.tracker_socket_ids:
        return session
    return replace(session, tracker_socket_ids=(*session.tracker_socket_ids, sid))


def without_tracked(session: Session, sid: str) -> Session:
    if session.tracked_socket_id != sid:
        return session
    return replace(session, tracked_socket_id=None)


def without_tracker(session: Session, sid: str) -> Session:
    if sid not in session.tracker_socket_ids:
        return session
    return replace(
        session, tracker_socket_ids=tuple(t for t in session.tracker_socket_ids if t != sid)
    )


def clear_pending(session: Session) -> Session:
    if session.pending_alert is None:
        return session
    return replace(session, pending_alert=None)


def fresh_from_storage(session: Session) -> Session:
    """Socket ids mean nothing to a process that did not make them."""
    return replace(session, tracked_socket_id=None, tracker_socket_ids=())
