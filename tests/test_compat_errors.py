"""Every error string of the protocol, as the real socket.io-client sees it, and the
Beyond rule that malformed payloads are answered with an error and change nothing.

`Code has expired` needs a 5-minute wait, so the unit tests cover it, not this suite.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.flows import (
    check_in,
    expect_error,
    new_code,
    only,
    pair,
    register,
    track,
    unknown_token,
)

pytestmark = pytest.mark.node


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("checkIn", lambda token: token),
        ("getStatus", lambda token: {"sessionToken": token}),
        (
            "setTimers",
            lambda token: {"sessionToken": token, "reminderTimeMinutes": 1, "alertTimeMinutes": 2},
        ),
        ("reconnectSession", lambda token: {"sessionToken": token, "role": "tracker"}),
        ("reconnectSession", lambda token: {"sessionToken": token, "role": "tracked"}),
    ],
    ids=["checkIn", "getStatus", "setTimers", "reconnect-tracker", "reconnect-tracked"],
)
async def test_an_unknown_session_token_is_an_invalid_session_token(
    server, node, transport, event, payload
):
    client = await node.connect(server.url, transport)

    client.emit(event, payload(unknown_token()))

    await expect_error(client, "Invalid session token")


async def test_reconnect_session_with_an_unknown_role_is_an_invalid_role(server, node, transport):
    p = await pair(node, server.url, transport)
    stranger = await node.connect(server.url, transport)

    stranger.emit("reconnectSession", {"sessionToken": p.token, "role": "admin"})

    await expect_error(stranger, "Invalid role")
    await stranger.expect_none("sessionReconnected", within=0.2)


async def test_tracking_an_unknown_code_is_an_invalid_or_expired_code(server, node, transport):
    tracker = await node.connect(server.url, transport)

    tracker.emit("trackCode", new_code())

    await expect_error(tracker, "Invalid or expired code")
    await tracker.expect_none("trackingStarted", within=0.2)


async def test_another_socket_cannot_take_over_a_pending_code(server, node, transport):
    owner = await node.connect(server.url, transport)
    intruder = await node.connect(server.url, transport)
    code, _ = await register(owner)

    intruder.emit("registerCode", code)

    await expect_error(intruder, "Code already in use. Generating new code...")
    # The owner's pairing still goes ahead, and only the owner hears about it.
    tracker = await node.connect(server.url, transport)
    await track(owner, tracker, code)
    await intruder.expect_none("trackerConnected", within=0.3)
    await intruder.expect_none("codeRegistered", within=0)


async def test_another_socket_naming_a_paired_code_does_not_get_its_session(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    intruder = await node.connect(server.url, transport)

    intruder.emit("registerCode", p.code)

    await expect_error(intruder, "Code already in use. Generating new code...")
    assert p.token not in repr(intruder.log)
    # The session still belongs to the tracked person.
    last = await check_in(p.tracked, p.token)
    assert only(await p.tracker.expect("checkInReceived"))["timestamp"] == last
    await intruder.expect_none("checkInReceived", within=0.2)


async def test_the_server_keeps_serving_the_socket_after_an_error(server, node, transport):
    p = await pair(node, server.url, transport)

    p.tracked.emit("checkIn", unknown_token())
    await expect_error(p.tracked, "Invalid session token")

    assert await check_in(p.tracked, p.token) > 0


# --------------------------------------------------------------- malformed payloads (Beyond)

MALFORMED = [
    ("registerCode", [None]),
    ("registerCode", []),
    ("registerCode", ["12345"]),
    ("registerCode", ["abcdef"]),
    ("trackCode", [None]),
    ("checkIn", [None]),
    ("checkIn", []),
    ("getStatus", [None]),
    ("getStatus", []),
    ("setTimers", [None]),
    ("reconnectSession", [None]),
    ("reconnectSession", ["not an object"]),
]


@pytest.mark.parametrize(("event", "args"), MALFORMED, ids=[f"{e}-{a!r}" for e, a in MALFORMED])
async def test_a_malformed_payload_gets_an_error_and_the_server_keeps_serving(
    server, node, transport, event, args
):
    p = await pair(node, server.url, transport)
    bystander = await node.connect(server.url, transport)

    bystander.emit(event, *args)

    message = only(await bystander.expect("error"))
    assert isinstance(message, str) and message
    # Nobody was disconnected and the session still works for everyone.
    assert bystander.connected and p.tracked.connected and p.tracker.connected
    last = await check_in(p.tracked, p.token)
    assert only(await p.tracker.expect("checkInReceived"))["timestamp"] == last


async def test_register_code_null_does_not_register_a_code_named_null(server, node, transport):
    tracked = await node.connect(server.url, transport)
    tracker = await node.connect(server.url, transport)
    tracked.emit("registerCode", None)
    await tracked.expect("error")

    tracker.emit("trackCode", None)

    await tracker.expect("error")
    await tracker.expect_none("trackingStarted", within=0.2)
    await tracked.expect_none("trackerConnected", within=0)


BAD_TIMERS = [
    {"reminderTimeMinutes": "30", "alertTimeMinutes": 60},
    {"reminderTimeMinutes": 30, "alertTimeMinutes": -5},
    {"reminderTimeMinutes": None, "alertTimeMinutes": 60},
    {"reminderTimeMinutes": 30},
]


@pytest.mark.parametrize("timers", BAD_TIMERS, ids=[repr(t) for t in BAD_TIMERS])
async def test_invalid_timer_minutes_are_rejected_and_change_nothing(
    server, node, transport, timers
):
    p = await pair(node, server.url, transport)

    p.tracked.emit("setTimers", {"sessionToken": p.token, **timers})

    message = only(await p.tracked.expect("error"))
    assert isinstance(message, str) and message
    await p.tracked.expect_none("timersSet", within=0.2)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/status/{p.token}") as response,
    ):
        assert response.status == 200
        assert (await response.json())["settingsConfigured"] is False
