"""The chaos run's checker, fed hand-written histories: each invariant holds on a history that
keeps it and fails, naming the evidence, on one that breaks it (so no check is vacuous)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from server import errors
from tests.support import chaos_checker as checker
from tests.support.chaos_history import (
    CONNECT,
    DISCONNECT,
    FINAL,
    RECV,
    SENT,
    Entry,
    FaultRecord,
    HealthSample,
    History,
    Memory,
    Snapshot,
)

T0 = 1_800_000_000_000  # a whole minute: the attempt window starts with the story
TOKEN = "ab" * 32
CODE = "123000"
APP, TRACKER, GUESSER = "tracked-0", "tracker-1", "guesser-2"
APP_SID, TRACKER_SID, GUESSER_SID = "inst.app1", "inst.trk1", "inst.gss1"
CONFIRMED = T0 + 300
DUE = T0 + 5_300


def at(
    ms: int,
    client: str,
    kind: str,
    sid: str | None,
    event: str = "",
    payload: object = None,
    token: str | None = None,
    awaiting: str | None = None,
    phase: str = "run",
) -> Entry:
    return Entry(T0 + ms, client, kind, sid, event, payload, token, awaiting, phase)


def record(**changes: object) -> dict[str, object]:
    stored: dict[str, object] = {
        "trackedSocketId": APP_SID,
        "trackerSocketIds": [TRACKER_SID],
        "lastCheckIn": CONFIRMED,
        "reminderTimeMinutes": 0.02,
        "alertTimeMinutes": 0.083,
        "alertTimeEnd": DUE,
        "settingsConfigured": True,
        "pendingAlert": DUE,
    }
    stored.update(changes)
    return stored


def story() -> History:
    """A tracked app, a tracker and a guesser doing everything right; the server keeping every
    promise. Each test breaks one thing."""
    joined = {"sessionToken": TOKEN}
    h = History(
        seed=1,
        started=T0,
        ended=T0 + 15_000,
        attempt_limit=3,
        roles={APP: "tracked", TRACKER: "tracker", GUESSER: "guesser"},
        addresses={APP: "10.0.0.7", TRACKER: "10.0.1.7", GUESSER: "10.99.0.1"},
        codes={APP: CODE},
    )
    h.entries = [
        at(0, APP, CONNECT, APP_SID),
        at(10, APP, SENT, APP_SID, "registerCode", CODE),
        at(20, APP, RECV, APP_SID, "codeRegistered", {"code": CODE}, awaiting="registerCode"),
        at(100, TRACKER, CONNECT, TRACKER_SID),
        at(110, TRACKER, SENT, TRACKER_SID, "trackCode", CODE),
        at(120, TRACKER, RECV, TRACKER_SID, "trackingStarted", joined, awaiting="trackCode"),
        at(121, APP, RECV, APP_SID, "trackerConnected", joined, awaiting="registerCode"),
        at(200, APP, SENT, APP_SID, "setTimers", {"sessionToken": TOKEN}, TOKEN),
        at(210, APP, RECV, APP_SID, "timersSet", {"alertTimeEnd": T0 + 5_000}, TOKEN, "setTimers"),
        at(300, APP, SENT, APP_SID, "checkIn", TOKEN, TOKEN),
        at(310, APP, RECV, APP_SID, "timersSet", {"alertTimeEnd": DUE}, TOKEN, "checkIn"),
        at(311, APP, RECV, APP_SID, "checkInConfirmed", {"timestamp": CONFIRMED}, TOKEN, "checkIn"),
        at(312, TRACKER, RECV, TRACKER_SID, "checkInReceived",
           {"sessionToken": TOKEN, "timestamp": CONFIRMED}, awaiting="trackCode"),
        at(5_400, TRACKER, RECV, TRACKER_SID, "checkInMissed",
           {"sessionToken": TOKEN, "timestamp": DUE}, awaiting="trackCode"),
        at(1_000, GUESSER, CONNECT, GUESSER_SID),
        at(1_010, GUESSER, SENT, GUESSER_SID, "trackCode", "100999"),
        at(1_011, GUESSER, SENT, GUESSER_SID, "trackCode", "200999"),
        at(1_020, GUESSER, RECV, GUESSER_SID, "error", errors.INVALID_OR_EXPIRED_CODE,
           awaiting="trackCode"),
        at(1_021, GUESSER, RECV, GUESSER_SID, "error", errors.INVALID_OR_EXPIRED_CODE,
           awaiting="trackCode"),
        at(1_030, GUESSER, RECV, GUESSER_SID, "error", errors.TOO_MANY_ATTEMPTS,
           awaiting="trackCode"),
        at(50_000, APP, SENT, APP_SID, "registerCode", CODE, TOKEN, phase=FINAL),
        at(50_010, APP, RECV, APP_SID, "codeRegistered", {"code": CODE, "sessionToken": TOKEN},
           TOKEN, "registerCode", FINAL),
        at(51_000, APP, DISCONNECT, APP_SID),
        at(51_000, TRACKER, DISCONNECT, TRACKER_SID),
        at(51_000, GUESSER, DISCONNECT, GUESSER_SID),
    ]  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    h.settled = Snapshot(
        T0 + 45_000,
        [APP_SID, TRACKER_SID, GUESSER_SID],
        {TOKEN: record()},
        {CODE: {"code": CODE, "tracked_sid": APP_SID, "session_token": TOKEN}},
        ["inst"],
    )
    h.emptied = Snapshot(
        T0 + 60_000, [], {TOKEN: record(trackedSocketId=None, trackerSocketIds=[])}, {}, ["inst"]
    )
    h.health = [HealthSample(T0 + 3_000, 0, 200, "up"), HealthSample(T0 + 9_000, 0, 200, "up")]
    h.logs = {"server-0.log": "INFO server.app: all well\n"}
    h.exit_codes = {"server-0.log": [0]}
    h.memory = [Memory(0, 50_000, 52_000)]
    return h


def verdict(check: Callable[[History], checker.Verdict], h: History) -> checker.Verdict:
    result = check(h)
    assert result.checked > 0, f"{result.name} looked at nothing"
    return result


def fails(check: Callable[[History], checker.Verdict], h: History, *words: str) -> None:
    result = verdict(check, h)
    assert not result.ok, result.render()
    text = "\n".join(result.evidence)
    for word in words:
        assert word in text, result.render()
    assert TOKEN not in result.render()  # tokens appear only by reference


def drop(h: History, event: str, client: str | None = None) -> None:
    h.entries = [e for e in h.entries if not (e.event == event and client in (None, e.client))]


def settled(h: History) -> Snapshot:
    assert h.settled is not None
    return h.settled


@pytest.mark.parametrize("check", checker.CHECKS, ids=lambda c: c.__name__)
def test_every_invariant_holds_on_a_story_that_keeps_it(
    check: Callable[[History], checker.Verdict],
) -> None:
    result = verdict(check, story())
    assert result.ok, result.render()


def test_a_confirmed_check_in_missing_from_redis_fails() -> None:
    h = story()
    settled(h).records[TOKEN]["lastCheckIn"] = CONFIRMED - 100
    fails(checker.confirmed_checkins_persisted, h, APP, "lastCheckIn=")
    del settled(h).records[TOKEN]
    fails(checker.confirmed_checkins_persisted, h, "no record in Redis")


def test_a_session_missing_from_redis_fails() -> None:
    h = story()
    del settled(h).records[TOKEN]
    fails(checker.sessions_persisted, h, TRACKER, "paired at +0.1s", "no record")


def test_a_session_answered_invalid_fails() -> None:
    h = story()
    h.entries.append(at(400, APP, SENT, APP_SID, "getStatus", {"sessionToken": TOKEN}, TOKEN))
    h.entries.append(
        at(401, APP, RECV, APP_SID, "error", errors.INVALID_SESSION, TOKEN, "getStatus")
    )
    fails(checker.session_tokens_stay_valid, h, "getStatus", "Invalid session token")


def test_an_armed_deadline_that_never_fires_fails() -> None:
    h = story()
    drop(h, "checkInMissed")
    settled(h).records[TOKEN]["pendingAlert"] = None
    fails(checker.armed_deadlines_fire, h, APP, "no checkInMissed")


def test_a_deadline_moved_by_a_later_check_in_is_not_expected() -> None:
    h = story()
    drop(h, "checkInMissed")
    settled(h).records[TOKEN]["pendingAlert"] = None
    h.entries.append(at(4_000, APP, SENT, APP_SID, "checkIn", TOKEN, TOKEN))  # never answered
    h.entries.sort(key=lambda e: e.t)
    result = checker.armed_deadlines_fire(h)
    assert result.ok, result.render()


def test_a_record_naming_a_gone_socket_fails() -> None:
    h = story()
    settled(h).records[TOKEN]["trackerSocketIds"] = [TRACKER_SID, "inst.gone"]
    fails(checker.no_ghost_sockets, h, "inst.gone", "not connected")
    h = story()
    assert h.emptied is not None
    h.emptied.records[TOKEN]["trackedSocketId"] = APP_SID
    fails(checker.no_ghost_sockets, h, "all gone", APP)


def test_a_code_owned_by_a_gone_socket_of_a_live_instance_fails() -> None:
    h = story()
    settled(h).codes[CODE]["tracked_sid"] = "inst.gone"
    fails(checker.codes_owned_by_live_sockets, h, CODE, "inst.gone")
    settled(h).codes[CODE]["tracked_sid"] = "dead.gone"  # its instance died: read as gone
    assert checker.codes_owned_by_live_sockets(h).ok


def test_an_app_refused_its_own_code_fails() -> None:
    h = story()
    final = next(e for e in h.entries if e.phase == FINAL and e.kind == RECV)
    final.event, final.payload = "error", errors.CODE_IN_USE
    fails(checker.own_code_reregisters, h, APP, "Code already in use")


def test_an_app_refused_its_own_code_after_its_old_socket_left_fails() -> None:
    h = story()
    h.entries += [
        at(600, APP, DISCONNECT, APP_SID),
        at(700, APP, CONNECT, "inst.app2"),
        at(2_700, APP, SENT, "inst.app2", "registerCode", CODE, TOKEN),
        at(2_710, APP, RECV, "inst.app2", "error", errors.CODE_IN_USE, TOKEN, "registerCode"),
    ]
    for entry in h.entries:
        if entry.sid == APP_SID and entry.t > T0 + 600:
            entry.sid = "inst.app2"  # the rest of the story happens on its new socket
    h.entries.sort(key=lambda e: e.t)
    fails(checker.own_code_reregisters, h, "+2.7s", "closed +0.6s")
    # Refused while the old socket is still open: in use indeed.
    h.entries = [e for e in h.entries if not (e.kind == DISCONNECT and e.sid == APP_SID)]
    assert checker.own_code_reregisters(h).ok


def test_refusals_while_the_killed_owner_is_not_yet_known_dead_are_excused() -> None:
    # Seed 204: the socket holding the code died with its instance (kill -9); the app's next
    # sockets were refused until the others noticed (5 s), one of them closing normally
    # meanwhile. That socket never held the code: the 7 s count from the owner's death.
    h = story()
    h.faults = [FaultRecord("kill9", T0 + 600, T0 + 900, 0)]
    h.entries += [
        at(600, APP, DISCONNECT, APP_SID),
        at(700, APP, CONNECT, "inst.app2"),
        at(710, APP, SENT, "inst.app2", "registerCode", CODE),
        at(720, APP, RECV, "inst.app2", "error", errors.CODE_IN_USE, None, "registerCode"),
        at(2_600, APP, DISCONNECT, "inst.app2"),
        at(3_500, APP, CONNECT, "inst.app3"),
        at(3_510, APP, SENT, "inst.app3", "registerCode", CODE),
        at(3_520, APP, RECV, "inst.app3", "error", errors.CODE_IN_USE, None, "registerCode"),
    ]
    for entry in h.entries:
        if entry.sid == APP_SID and entry.t > T0 + 600:
            entry.sid = "inst.app3"
    h.entries.sort(key=lambda e: e.t)
    assert checker.own_code_reregisters(h).ok
    # Past the 7 s: a fault of the checker's own making would hide a real ghost.
    late = [e for e in h.entries if e.sid == "inst.app3" and e.t < T0 + 4_000]
    for entry in late:
        entry.t += 7_000
    h.entries.sort(key=lambda e: e.t)
    fails(checker.own_code_reregisters, h, "+10.5s", "closed +0.6s")


def test_a_paired_code_registered_without_its_session_fails() -> None:
    h = story()
    final = next(e for e in h.entries if e.phase == FINAL and e.kind == RECV)
    final.payload = {"code": CODE}
    fails(checker.paired_code_keeps_its_session, h, APP, "sessionToken -")


def test_a_paired_code_registered_afresh_while_redis_was_away_is_excused() -> None:
    h = story()
    final = next(e for e in h.entries if e.phase == FINAL and e.kind == RECV)
    final.payload = {"code": CODE}
    # Redis away around that answer: an instance that does not hold the code cannot know it.
    h.faults.append(FaultRecord("redis-restart", final.t - 500, final.t + 500))
    assert checker.paired_code_keeps_its_session(h).ok


def test_a_tracker_that_never_hears_a_check_in_fails() -> None:
    h = story()
    drop(h, "checkInReceived")
    fails(checker.checkin_heard_once, h, TRACKER, "never heard checkInReceived")


def test_a_check_in_pushed_twice_fails() -> None:
    h = story()
    copy = next(e for e in h.entries if e.event == "checkInReceived")
    h.entries.append(at(copy.t - T0 + 5, TRACKER, RECV, TRACKER_SID, copy.event, copy.payload))
    h.entries.sort(key=lambda e: e.t)
    fails(checker.checkin_heard_once, h, "pushed 2 times")


def test_a_tracker_rejoining_without_the_last_check_in_fails() -> None:
    h = story()
    rejoin = {"sessionToken": TOKEN, "role": "tracker"}
    h.entries += [
        at(2_000, TRACKER, CONNECT, "inst.trk2"),
        at(2_010, TRACKER, SENT, "inst.trk2", "reconnectSession", rejoin, TOKEN),
        at(2_020, TRACKER, RECV, "inst.trk2", "sessionReconnected", rejoin, TOKEN,
           "reconnectSession"),
    ]  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    fails(checker.checkin_heard_once, h, "joined at +2.0s without hearing")
    h.entries.append(
        at(2_021, TRACKER, RECV, "inst.trk2", "checkInReceived",
           {"sessionToken": TOKEN, "timestamp": CONFIRMED}, TOKEN, "reconnectSession")
    )  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    assert checker.checkin_heard_once(h).ok


def test_a_rejoin_elsewhere_just_after_redis_came_back_empty_is_excused() -> None:
    # Seed 201: the check-in was confirmed on one instance in the moment after Redis came
    # back empty (held there while the copies were written back); a tracker rejoining through
    # another instance then did not hear it. Documented, like Redis being away.
    h = story()
    rejoin = {"sessionToken": TOKEN, "role": "tracker"}
    h.entries += [
        at(2_000, TRACKER, CONNECT, "other.trk2"),
        at(2_010, TRACKER, SENT, "other.trk2", "reconnectSession", rejoin, TOKEN),
        at(2_020, TRACKER, RECV, "other.trk2", "sessionReconnected", rejoin, TOKEN,
           "reconnectSession"),
    ]  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    # Back 1.5 s before the check-in: Redis was not away then, but the copies were being
    # written back.
    h.faults = [FaultRecord("redis-restart", T0 - 5_000, T0 - 1_200)]
    assert checker.checkin_heard_once(h).ok
    h.faults = [FaultRecord("redis-restart", T0 - 9_000, T0 - 5_000)]  # long before
    fails(checker.checkin_heard_once, h, "joined at +2.0s without hearing")


def test_a_missed_check_in_that_never_reaches_a_connected_tracker_fails() -> None:
    h = story()
    drop(h, "checkInMissed")  # pending in the record, but nobody was told
    fails(checker.missed_checkin_reaches_trackers_once, h, TRACKER, "never heard the missed")


def test_an_alert_made_pending_by_get_status_is_not_a_deadline_to_push() -> None:
    h = story()
    settled(h).records[TOKEN]["pendingAlert"] = DUE + 1_234  # getStatus saw it first
    drop(h, "checkInMissed")
    assert checker.missed_checkin_reaches_trackers_once(h).ok


def test_a_missed_check_in_pushed_twice_fails() -> None:
    h = story()
    missed = next(e for e in h.entries if e.event == "checkInMissed")
    h.entries.append(at(missed.t - T0 + 30, TRACKER, RECV, TRACKER_SID, "checkInMissed",
                        missed.payload))  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    fails(checker.missed_checkin_reaches_trackers_once, h, "pushed 2 times")


def test_an_alert_for_a_deadline_a_check_in_moved_fails() -> None:
    h = story()
    h.entries += [
        at(1_000, APP, SENT, APP_SID, "checkIn", TOKEN, TOKEN),
        at(1_010, APP, RECV, APP_SID, "checkInConfirmed", {"timestamp": T0 + 1_000}, TOKEN,
           "checkIn"),
    ]  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    fails(checker.no_false_alarms, h, TRACKER, "had checked in at +1.0s")


def test_more_wrong_codes_evaluated_than_the_limit_fails() -> None:
    h = story()
    for n in range(2):
        h.entries.append(at(1_012 + n, GUESSER, SENT, "inst.gss1", "trackCode", f"30{n}999"))
        h.entries.append(
            at(1_025 + n, GUESSER, RECV, "inst.gss1", "error", errors.INVALID_OR_EXPIRED_CODE,
               awaiting="trackCode")
        )  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    fails(checker.attempt_limit_holds, h, "10.99.0.1: 4 codes evaluated", "limit 3")
    # Answered while Redis was restarting: each instance counted alone, not counted here.
    h.faults.append(FaultRecord("redis-restart", T0 + 900, T0 + 1_100))
    assert checker.attempt_limit_holds(h).ok


def test_a_right_guess_evaluated_past_the_limit_fails() -> None:
    h = story()  # the guesser's two wrong codes; the limit is 3
    h.entries.append(at(1_012, GUESSER, SENT, GUESSER_SID, "trackCode", "300999"))
    h.entries.append(
        at(1_022, GUESSER, RECV, GUESSER_SID, "error", errors.INVALID_OR_EXPIRED_CODE,
           awaiting="trackCode")
    )  # fmt: skip
    joined = {"sessionToken": TOKEN}
    for n in range(2):  # asked once the limit was reached: must have been refused
        h.entries.append(at(1_040 + n, GUESSER, SENT, GUESSER_SID, "trackCode", CODE))
        h.entries.append(
            at(1_045 + n, GUESSER, RECV, GUESSER_SID, "trackingStarted", joined,
               awaiting="trackCode")
        )  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    fails(checker.attempt_limit_holds, h, "10.99.0.1: 5 codes evaluated")


def test_a_right_guess_before_the_limit_is_an_honest_pairing() -> None:
    h = story()
    joined = {"sessionToken": TOKEN}
    for n in range(2):
        h.entries.append(at(1_012 + n, GUESSER, SENT, GUESSER_SID, "trackCode", CODE))
        h.entries.append(
            at(1_025 + n, GUESSER, RECV, GUESSER_SID, "trackingStarted", joined,
               awaiting="trackCode")
        )  # fmt: skip
    h.entries.sort(key=lambda e: e.t)
    assert checker.attempt_limit_holds(h).ok


def test_a_six_digit_code_answered_with_a_format_complaint_fails() -> None:
    h = story()
    h.entries.append(at(1_100, GUESSER, SENT, GUESSER_SID, "trackCode", "000999"))
    h.entries.append(
        at(1_101, GUESSER, RECV, GUESSER_SID, "error", errors.INVALID_CODE, awaiting="trackCode")
    )
    fails(checker.wrong_codes_get_node_words, h, "['000999']", "6 digits")


def test_healthz_saying_up_while_redis_is_down_fails() -> None:
    h = story()
    h.faults.append(FaultRecord("redis-restart", T0 + 5_000, T0 + 9_500))
    fails(checker.healthz_agrees, h, "instance 0 at +9.0s", "while Redis was down")
    h.health[1] = HealthSample(T0 + 9_000, 0, 200, "down")
    assert checker.healthz_agrees(h).ok


def test_a_traceback_in_a_log_fails() -> None:
    h = story()
    h.logs["server-1.log"] = (
        "ERROR server.events: checkIn from x failed\n"
        "Traceback (most recent call last):\n"
        '  File "server/events.py", line 1, in check_in\n'
        "KeyError: 'boom'\n"
    )
    fails(checker.logs_clean, h, "server-1.log:2", "KeyError: 'boom'")
    h = story()
    h.exit_codes["server-0.log"] = [0, 1]
    fails(checker.logs_clean, h, "exit code 1")


def test_memory_that_does_not_come_back_fails() -> None:
    h = story()
    h.memory = [Memory(0, 50_000, 50_000 + h.memory_slack_kb + 1_024)]
    fails(checker.memory_returns, h, "instance 0")


def test_a_dumped_history_loads_back_and_checks_the_same() -> None:
    h = story()
    again = History.load(h.dump())
    assert again == h
    assert [v.ok for v in checker.check(again)] == [v.ok for v in checker.check(h)]
