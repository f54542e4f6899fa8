"""The protocol's decisions as pure functions of (record, input, now); times in ms."""

from __future__ import annotations

import secrets
from collections.abc import Callable
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
    """A sign of life: clears a pending alert and, when timers are set, restarts them from now.

    A check-in older than the one recorded changes nothing: made again on a newer record (a
    change held while Redis was away, replayed after another instance's), it must not move
    the last check-in, or the deadlines, back."""
    if session.last_check_in is not None and now <= session.last_check_in:
        return session
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
        # Pending, but not yet told: the scheduler still pushes it to the trackers (once).
        return replace(session, pending_alert=now), True
    return session, expired


def with_tracked(session: Session, sid: str) -> Session:
    return replace(session, tracked_socket_id=sid)


def with_tracker(session: Session, sid: str) -> Session:
    if sid in session.tracker_socket_ids:
        return session
    return replace(session, tracker_socket_ids=(*session.tracker_socket_ids, sid))


def join_as_tracker(session: Session, sid: str, limit: int) -> tuple[Session, bool]:
    """A tracker joins, unless `limit` trackers are there already; False: refused. One that is
    in the list already re-joins whatever the count (its app reconnected)."""
    if sid in session.tracker_socket_ids:
        return session, True
    if len(session.tracker_socket_ids) >= limit:
        return session, False
    return with_tracker(session, sid), True


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


def live_sockets(session: Session, is_live: Callable[[str], bool]) -> Session:
    """Drop the socket ids of instances that are gone (a crash, a restart, the Node server):
    those sockets are not connected, whatever the record says."""
    tracked = session.tracked_socket_id
    trackers = session.tracker_socket_ids
    if (tracked is None or is_live(tracked)) and all(is_live(t) for t in trackers):
        return session
    return replace(
        session,
        tracked_socket_id=tracked if tracked is not None and is_live(tracked) else None,
        tracker_socket_ids=tuple(t for t in trackers if is_live(t)),
    )


ALERT: Final = "alert"
REMINDER: Final = "reminder"


def deadlines(session: Session, now: int) -> dict[str, int]:
    """What the scheduler must wake up for: the alert, and the reminder while it is ahead.

    Nothing once the alert was told (`alerted`) or while timers are not set; an alert that
    getStatus made pending first is still told by the scheduler. A session that has
    set timers but never checked in alerts too: its deadlines count from when the timers were
    set, as PROTOCOL.md computes alertTimeEnd. A reminder not before the alert is dropped (the
    alert says more), and so is one already past: a late reminder helps nobody.
    """
    if not timers_armed(session) or session.alert_time_end is None:
        return {}
    if alerted(session):
        return {}
    due = {ALERT: round(session.alert_time_end)}
    reminder = session.reminder_time_end
    if (
        session.pending_alert is None
        and reminder is not None
        and now < reminder < session.alert_time_end
    ):
        due[REMINDER] = round(reminder)
    return due


def alerted(session: Session) -> bool:
    """An alert was raised for the current alert deadline (it may have been cleared since by a
    tracker's reconnect): it is not raised again until a check-in or new timers move it."""
    end = session.alert_time_end
    if end is None:
        return False
    if session.alerted_for is None:
        # Fired by a version that did not record it: it made the due time pending.
        return session.pending_alert is not None and round(session.pending_alert) == round(end)
    return round(session.alerted_for) == round(end)


def fire_alert(session: Session, due: int) -> tuple[Session, bool]:
    """The alert deadline `due` has passed: make it pending, unless it is stale."""
    if (
        session.alert_time_end is None
        or round(session.alert_time_end) != due
        or not timers_armed(session)
        or alerted(session)
    ):
        return session, False
    # Pending already if getStatus saw it first (that time is kept); told now either way.
    pending = session.pending_alert if session.pending_alert is not None else due
    return replace(session, pending_alert=pending, alerted_for=due), True


def reminder_due(session: Session, due: int, now: int) -> bool:
    """The reminder deadline `due` still stands (no check-in, no new timers since) and the
    alert has not come yet (after downtime a late reminder would only confuse)."""
    return (
        session.pending_alert is None
        and session.reminder_time_end is not None
        and round(session.reminder_time_end) == due
        and session.alert_time_end is not None
        and now < session.alert_time_end
        and timers_armed(session)
    )


def check_in_clearing(session: Session, now: int) -> tuple[Session, int | float | None]:
    """check_in, reporting the pending alert it cleared (for the all-clear)."""
    after = check_in(session, now)
    return after, session.pending_alert if after is not session else None
