"""The protocol's decisions, called directly with an explicit `now`."""

import pytest

from server import rules
from server.models import Session

NOW = 1_800_000_000_000
MIN = 60_000


def armed(**fields: object) -> Session:
    base = {"reminder_time_minutes": 10, "alert_time_minutes": 20, "settings_configured": True}
    return Session(**{**base, **fields})  # type: ignore[arg-type]


def test_a_check_in_without_timers_only_records_the_time() -> None:
    session = rules.check_in(Session(pending_alert=NOW - 5), NOW)
    assert session.last_check_in == NOW
    assert session.pending_alert is None
    assert session.reminder_time_end is None and session.alert_time_end is None
    assert not rules.timers_armed(session)


def test_a_check_in_restarts_armed_timers_from_now() -> None:
    session = rules.check_in(armed(last_check_in=NOW - 99 * MIN), NOW)
    assert session.reminder_time_end == NOW + 10 * MIN
    assert session.alert_time_end == NOW + 20 * MIN
    assert rules.timers_payload(session) == {
        "reminderTimeMinutes": 10,
        "alertTimeMinutes": 20,
        "reminderTimeEnd": NOW + 10 * MIN,
        "alertTimeEnd": NOW + 20 * MIN,
    }


def test_an_older_check_in_made_again_on_a_newer_record_changes_nothing() -> None:
    # Two instances held a check-in each while Redis was away; replayed in either order, the
    # record keeps the newest (found by the chaos run: a confirmed check-in was undone).
    newer = rules.check_in(armed(last_check_in=NOW - 99 * MIN, pending_alert=NOW - MIN), NOW)
    assert rules.check_in(newer, NOW - 1_000) is newer
    assert rules.check_in_clearing(newer, NOW - 1_000) == (newer, None)
    older_first = rules.check_in(rules.check_in(armed(last_check_in=0), NOW - 1_000), NOW)
    assert older_first.last_check_in == NOW
    assert older_first.alert_time_end == newer.alert_time_end


def test_timers_count_from_the_last_check_in_when_there_is_one() -> None:
    session = rules.set_timers(Session(last_check_in=NOW - MIN), 0.5, 2, NOW)
    assert session.settings_configured
    assert session.reminder_time_end == NOW - MIN + 30_000
    assert session.alert_time_end == NOW + MIN


def test_timers_count_from_now_without_a_check_in() -> None:
    session = rules.set_timers(Session(), 1, 3, NOW)
    assert (session.reminder_time_end, session.alert_time_end) == (NOW + MIN, NOW + 3 * MIN)


def test_fractional_minutes_give_whole_milliseconds() -> None:
    session = rules.set_timers(Session(), 0.0001, 0.01, NOW)
    assert session.reminder_time_end == NOW + 6
    assert isinstance(session.reminder_time_end, int)


def test_the_alert_expires_only_after_the_alert_time_has_passed() -> None:
    session = armed(last_check_in=NOW - 20 * MIN)
    assert not rules.alert_expired(session, NOW)
    assert rules.alert_expired(session, NOW + 1)


def test_the_alert_never_expires_without_a_check_in_or_settings() -> None:
    assert not rules.alert_expired(armed(), NOW)
    assert not rules.alert_expired(armed(last_check_in=0, settings_configured=False), NOW)


def test_status_makes_an_expired_alert_pending_once() -> None:
    first, expired = rules.observe_status(armed(last_check_in=NOW - 30 * MIN), NOW)
    assert expired and first.pending_alert == NOW
    again, still = rules.observe_status(first, NOW + 5_000)
    assert still and again is first  # the first time it was seen stays the alert's time


def test_status_changes_nothing_while_the_alert_is_not_due() -> None:
    session = armed(last_check_in=NOW)
    assert rules.observe_status(session, NOW + MIN) == (session, False)


def test_sockets_join_and_leave_without_duplicates() -> None:
    session = rules.with_tracker(rules.with_tracker(Session(), "a"), "a")
    assert session.tracker_socket_ids == ("a",)
    assert rules.without_tracker(session, "b") is session
    assert rules.without_tracker(session, "a").tracker_socket_ids == ()
    tracked = rules.with_tracked(session, "t")
    assert rules.without_tracked(tracked, "other") is tracked
    assert rules.without_tracked(tracked, "t").tracked_socket_id is None


def test_sockets_of_dead_instances_stop_counting() -> None:
    stored = armed(
        tracked_socket_id="dead.t", tracker_socket_ids=("live.a", "dead.b"), last_check_in=NOW
    )
    fresh = rules.live_sockets(stored, lambda sid: sid.startswith("live."))
    assert fresh.tracked_socket_id is None and fresh.tracker_socket_ids == ("live.a",)
    assert fresh.last_check_in == NOW and fresh.settings_configured
    everyone = rules.live_sockets(stored, lambda sid: True)
    assert everyone is stored
    nobody = rules.live_sockets(stored, lambda sid: False)
    assert nobody.tracked_socket_id is None and nobody.tracker_socket_ids == ()


def test_tokens_are_64_lowercase_hex_and_distinct() -> None:
    tokens = {rules.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) == 64 and t == t.lower() and int(t, 16) >= 0 for t in tokens)


# A change that another instance got in before is made again on the newer record, and in a rare
# interleaving after a Redis outage on a record that already has it: made twice, it must give
# what it gave once.
CHANGES = {
    "check_in": lambda s: rules.check_in(s, NOW),
    "set_timers": lambda s: rules.set_timers(s, 10, 20, NOW),
    "with_tracked": lambda s: rules.with_tracked(s, "i.t"),
    "with_tracker": lambda s: rules.with_tracker(s, "i.a"),
    "without_tracked": lambda s: rules.without_tracked(s, "i.t"),
    "without_tracker": lambda s: rules.without_tracker(s, "i.a"),
    "clear_pending": rules.clear_pending,
    "observe_status": lambda s: rules.observe_status(s, now=NOW + 99 * MIN)[0],
    "fire_alert": lambda s: rules.fire_alert(s, round(s.alert_time_end or 0))[0],
}


@pytest.mark.parametrize("name", sorted(CHANGES))
@pytest.mark.parametrize(
    "session",
    [
        Session(),
        armed(last_check_in=NOW - 5 * MIN, tracked_socket_id="i.t", tracker_socket_ids=("i.a",)),
        armed(last_check_in=NOW - 99 * MIN, pending_alert=NOW - MIN),
    ],
)
def test_every_change_made_twice_gives_what_it_gave_once(name: str, session: Session) -> None:
    change = CHANGES[name]
    once = change(session)
    assert change(once) == once


def test_a_missed_check_in_cleared_by_a_reconnect_is_not_raised_again() -> None:
    # Found by the chaos run: a tracker's reconnectSession clears the pending alert (as the Node
    # server did); the deadline then stood again, already past, and the same missed check-in
    # was pushed to every tracker once more, round after round.
    session = armed(last_check_in=NOW - 30 * MIN, alert_time_end=NOW - 10 * MIN)
    due = NOW - 10 * MIN
    fired, raised = rules.fire_alert(session, due)
    assert raised and fired.pending_alert == due
    cleared = rules.clear_pending(fired)
    assert rules.deadlines(cleared, NOW) == {}
    assert rules.fire_alert(cleared, due) == (cleared, False)
    # A check-in moves the deadline: the next miss is raised.
    after = rules.check_in(cleared, NOW)
    assert rules.deadlines(after, NOW)[rules.ALERT] == NOW + 20 * MIN


def test_a_missed_check_in_seen_by_get_status_first_is_still_told_once() -> None:
    # Found by the chaos run: a getStatus at the due time made the alert pending, and the
    # scheduler then skipped it: no tracker was ever pushed checkInMissed.
    late = armed(last_check_in=NOW - 30 * MIN, alert_time_end=NOW - 10 * MIN)
    seen, expired = rules.observe_status(late, NOW)
    assert expired and seen.pending_alert == NOW
    assert rules.deadlines(seen, NOW) == {rules.ALERT: NOW - 10 * MIN}
    told, raised = rules.fire_alert(seen, NOW - 10 * MIN)
    assert raised and told.pending_alert == NOW  # the time getStatus saw it is kept
    assert rules.deadlines(rules.clear_pending(told), NOW) == {}


def test_a_full_session_refuses_a_new_tracker_but_not_one_rejoining() -> None:
    full = Session(tracker_socket_ids=("a", "b"))
    assert rules.join_as_tracker(full, "c", 2) == (full, False)
    assert rules.join_as_tracker(full, "a", 2) == (full, True)
    joined, admitted = rules.join_as_tracker(full, "c", 3)
    assert admitted and joined.tracker_socket_ids == ("a", "b", "c")
