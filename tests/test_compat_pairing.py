"""Pairing, check-ins, timers and status, driven by the real socket.io-client 4.x.

Every test runs twice: polling first with upgrade (what the apps do) and websocket only.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.flows import (
    CODE_TTL_MS,
    TOKEN_RE,
    assert_recent,
    check_in,
    new_code,
    now_ms,
    only,
    pair,
    register,
    rejoin_as_tracker,
    track,
)

pytestmark = pytest.mark.node


@pytest.fixture(params=["lean", "stock"])
def websocket_driver(request: pytest.FixtureRequest) -> str:
    """Run on engine.io's stock WebSocket driver too (WEBSOCKET_DRIVER=stock, the way back)."""
    return str(request.param)


TIMER_KEYS = {"reminderTimeMinutes", "alertTimeMinutes", "reminderTimeEnd", "alertTimeEnd"}


async def test_register_code_replies_with_the_code_and_an_expiry_five_minutes_ahead(
    server, node, transport
):
    tracked = await node.connect(server.url, transport)
    before = now_ms()

    code, payload = await register(tracked)

    assert payload["code"] == code
    assert_recent(payload["expiresAt"] - CODE_TTL_MS, before)
    assert "sessionToken" not in payload  # no session exists for a fresh code


async def test_track_code_starts_a_session_and_tells_the_tracked_person(server, node, transport):
    tracked = await node.connect(server.url, transport)
    tracker = await node.connect(server.url, transport)
    code, _ = await register(tracked)

    tracker.emit("trackCode", code)

    started = only(await tracker.expect("trackingStarted"))
    assert TOKEN_RE.match(started["sessionToken"]), started
    connected = only(await tracked.expect("trackerConnected"))
    assert connected["sessionToken"] == started["sessionToken"]


async def test_a_second_tracker_joins_the_same_session(server, node, transport):
    p = await pair(node, server.url, transport)
    second = await node.connect(server.url, transport)

    token = await track(p.tracked, second, p.code)

    assert token == p.token


async def test_a_late_tracker_receives_the_last_check_in_when_it_pairs(server, node, transport):
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    late = await node.connect(server.url, transport)

    await track(p.tracked, late, p.code)

    assert only(await late.expect("checkInReceived")) == {
        "sessionToken": p.token,
        "timestamp": last,
    }


async def test_check_in_is_confirmed_and_pushed_to_every_tracker_at_once(server, node, transport):
    p = await pair(node, server.url, transport)
    second = await node.connect(server.url, transport)
    await track(p.tracked, second, p.code)
    before = now_ms()

    p.tracked.emit("checkIn", p.token)

    confirmed = only(await p.tracked.expect("checkInConfirmed"))
    assert_recent(confirmed["timestamp"], before)
    for tracker in (p.tracker, second):
        pushed = only(await tracker.expect("checkInReceived", timeout=1.0))
        assert pushed == {"sessionToken": p.token, "timestamp": confirmed["timestamp"]}


async def test_check_in_without_timers_sends_no_timers_set(server, node, transport):
    p = await pair(node, server.url, transport)

    await check_in(p.tracked, p.token)

    await p.tracked.expect_none("timersSet", within=0.3)


async def test_set_timers_counts_from_now_before_any_check_in(server, node, transport):
    p = await pair(node, server.url, transport)
    before = now_ms()

    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 30, "alertTimeMinutes": 60},
    )

    timers = only(await p.tracked.expect("timersSet"))
    assert TIMER_KEYS <= timers.keys()
    assert timers["reminderTimeMinutes"] == 30
    assert timers["alertTimeMinutes"] == 60
    assert_recent(timers["reminderTimeEnd"] - 30 * 60_000, before)
    assert timers["alertTimeEnd"] - timers["reminderTimeEnd"] == 30 * 60_000


async def test_set_timers_counts_from_the_last_check_in(server, node, transport):
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    await asyncio.sleep(0.05)  # so that "now" and lastCheckIn differ

    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 0.5, "alertTimeMinutes": 2},
    )

    timers = only(await p.tracked.expect("timersSet"))
    assert timers["reminderTimeMinutes"] == 0.5
    assert timers["alertTimeMinutes"] == 2
    assert timers["reminderTimeEnd"] == last + 30_000
    assert timers["alertTimeEnd"] == last + 120_000


async def test_check_in_after_set_timers_restarts_the_timers_before_confirming(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 1, "alertTimeMinutes": 3},
    )
    await p.tracked.expect("timersSet")

    p.tracked.emit("checkIn", p.token)

    timers = only(await p.tracked.expect("timersSet"))
    confirmed = only(await p.tracked.expect("checkInConfirmed"))
    order = [name for name in p.tracked.events() if name in ("timersSet", "checkInConfirmed")]
    assert order == ["timersSet", "timersSet", "checkInConfirmed"]
    assert timers["reminderTimeEnd"] == confirmed["timestamp"] + 60_000
    assert timers["alertTimeEnd"] == confirmed["timestamp"] + 180_000
    assert (timers["reminderTimeMinutes"], timers["alertTimeMinutes"]) == (1, 3)


async def test_get_status_before_any_check_in(server, node, transport):
    p = await pair(node, server.url, transport)

    p.tracker.emit("getStatus", {"sessionToken": p.token})

    assert only(await p.tracker.expect("statusUpdate")) == {
        "sessionToken": p.token,
        "lastCheckIn": None,
        "alertExpired": False,
    }


async def test_get_status_reports_the_last_check_in(server, node, transport):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 30, "alertTimeMinutes": 60},
    )
    await p.tracked.expect("timersSet")
    last = await check_in(p.tracked, p.token)

    p.tracker.emit("getStatus", {"sessionToken": p.token})

    status = only(await p.tracker.expect("statusUpdate"))
    assert status["sessionToken"] == p.token
    assert status["lastCheckIn"] == last
    assert status["alertExpired"] is False


async def test_get_status_reports_alert_expired_once_the_alert_time_has_passed(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 0.002, "alertTimeMinutes": 0.005},
    )
    await p.tracked.expect("timersSet")
    last = await check_in(p.tracked, p.token)
    await asyncio.sleep(0.45)  # alert after 0.005 min = 300 ms

    p.tracker.emit("getStatus", {"sessionToken": p.token})

    status = only(await p.tracker.expect("statusUpdate"))
    assert status == {"sessionToken": p.token, "lastCheckIn": last, "alertExpired": True}


async def test_a_reconnecting_tracker_gets_session_reconnected_then_the_last_check_in(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    await p.tracker.disconnect()
    again = await rejoin_as_tracker(node, server.url, transport, p.token, last)

    assert again.events()[:2] == ["sessionReconnected", "checkInReceived"]


async def test_a_reconnecting_tracker_is_told_about_a_missed_check_in_first(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 0.002, "alertTimeMinutes": 0.005},
    )
    await p.tracked.expect("timersSet")
    last = await check_in(p.tracked, p.token)
    await p.tracker.disconnect()
    await asyncio.sleep(0.45)
    p.tracked.emit("getStatus", {"sessionToken": p.token})
    assert only(await p.tracked.expect("statusUpdate"))["alertExpired"] is True
    again = await node.connect(server.url, transport)

    again.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})

    await again.expect("sessionReconnected")
    missed = only(await again.expect("checkInMissed"))
    received = only(await again.expect("checkInReceived"))
    assert missed["sessionToken"] == p.token
    assert missed["timestamp"] > last
    assert received == {"sessionToken": p.token, "timestamp": last}
    assert again.events()[:3] == ["sessionReconnected", "checkInMissed", "checkInReceived"]


async def test_a_reconnecting_tracked_person_takes_over_the_session(server, node, transport):
    p = await pair(node, server.url, transport)
    await p.tracked.disconnect()
    await p.tracker.expect("trackedPersonDisconnected")
    again = await node.connect(server.url, transport)

    again.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})

    assert only(await again.expect("sessionReconnected")) == {
        "sessionToken": p.token,
        "role": "tracked",
    }
    # The new socket is now the session's tracked socket: its check-ins reach the tracker,
    # and its leaving is announced.
    last = await check_in(again, p.token)
    assert only(await p.tracker.expect("checkInReceived"))["timestamp"] == last
    await again.disconnect()
    assert await p.tracker.expect("trackedPersonDisconnected") == []


async def test_the_tracked_person_registering_its_paired_code_again_gets_the_session(
    server, node, transport
):
    p = await pair(node, server.url, transport)

    _, payload = await register(p.tracked, p.code)

    assert payload["code"] == p.code
    assert payload["sessionToken"] == p.token
    assert isinstance(payload["expiresAt"], int)


async def test_the_tracked_app_can_register_its_pending_code_again_after_reconnecting(
    server, node, transport
):
    first = await node.connect(server.url, transport)
    code, _ = await register(first)
    await first.kill_transport()  # the phone lost its connection
    again = await node.connect(server.url, transport)

    _, payload = await register(again, code)

    assert payload["code"] == code
    tracker = await node.connect(server.url, transport)
    token = await track(again, tracker, code)
    assert TOKEN_RE.match(token)


async def test_codes_are_independent_of_each_other(server, node, transport):
    one = await node.connect(server.url, transport)
    two = await node.connect(server.url, transport)
    code_one, _ = await register(one, new_code())
    code_two, _ = await register(two, new_code())
    tracker_one = await node.connect(server.url, transport)
    tracker_two = await node.connect(server.url, transport)

    token_one = await track(one, tracker_one, code_one)
    token_two = await track(two, tracker_two, code_two)

    assert token_one != token_two
    one.emit("checkIn", token_one)
    await tracker_one.expect("checkInReceived")
    await tracker_two.expect_none("checkInReceived", within=0.3)
