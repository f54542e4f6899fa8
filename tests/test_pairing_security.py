"""A paired code gives its session only to its owner; tokens never reach the log."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.flows import check_in, expect_error, only, pair, register
from tests.support.nodeclient import NodeDriver

IN_USE = "Code already in use. Generating new code..."
NOT_THE_TRACKED_PERSON = "Not allowed: this connection is a tracker of the session"


async def test_the_tracked_app_reclaims_its_paired_code_after_reconnecting(
    node: NodeDriver, start_server: Any, transport: str
) -> None:
    server = await start_server()
    pairing = await pair(node, server.url, transport)
    await pairing.tracked.disconnect()
    await pairing.tracker.expect("trackedPersonDisconnected")
    again = await node.connect(server.url, transport)
    _, reply = await register(again, pairing.code)
    assert reply["sessionToken"] == pairing.token
    # It is the tracked socket again: a new tracker's arrival is announced to it.
    second = await node.connect(server.url, transport)
    second.emit("trackCode", pairing.code)
    assert only(await second.expect("trackingStarted"))["sessionToken"] == pairing.token
    assert only(await again.expect("trackerConnected"))["sessionToken"] == pairing.token


async def test_a_stranger_cannot_reclaim_a_code_whose_owner_is_connected(
    node: NodeDriver, start_server: Any, transport: str
) -> None:
    server = await start_server()
    pairing = await pair(node, server.url, transport)
    stranger = await node.connect(server.url, transport)
    stranger.emit("registerCode", pairing.code)
    await expect_error(stranger, IN_USE)
    assert stranger.received("codeRegistered") == []
    # The owner's session goes on undisturbed.
    await check_in(pairing.tracked, pairing.token)
    await pairing.tracker.expect("checkInReceived")


async def test_a_paired_code_retires_once_its_owner_has_been_gone_past_the_grace(
    node: NodeDriver, start_server: Any
) -> None:
    server = await start_server(CODE_GRACE_SECONDS="0.3")
    pairing = await pair(node, server.url, "websocket")
    await pairing.tracked.disconnect()
    await asyncio.sleep(0.5)
    latecomer = await node.connect(server.url, "websocket")
    latecomer.emit("trackCode", pairing.code)
    await expect_error(latecomer, "Invalid or expired code")
    _, reply = await register(latecomer, pairing.code)
    assert "sessionToken" not in reply  # a fresh, unpaired code: the old session stays private
    # The session itself lives on for whoever holds its token.
    pairing.tracker.emit("getStatus", {"sessionToken": pairing.token})
    assert only(await pairing.tracker.expect("statusUpdate"))["sessionToken"] == pairing.token


async def test_session_tokens_never_appear_whole_in_the_log(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, LOG_LEVEL="DEBUG")
    pairing = await pair(node, server.url, "polling")
    await pairing.tracked.disconnect()
    # Any holder of the token may check in (a socket bound as a tracker is refused, and that
    # refusal is logged too).
    holder = await node.connect(server.url, "polling")
    await check_in(holder, pairing.token)
    holder.emit("setTimers", {"sessionToken": pairing.token, "reminderTimeMinutes": -1})
    await holder.expect("error")
    pairing.tracker.emit("checkIn", pairing.token)
    await expect_error(pairing.tracker, NOT_THE_TRACKED_PERSON)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/status/{pairing.token}") as response:
            assert response.status == 200
    await server.restart()
    tracker = await node.connect(server.url, "websocket")
    tracker.emit("reconnectSession", {"sessionToken": pairing.token, "role": "tracker"})
    await tracker.expect("sessionReconnected")
    log = server.log_text()
    assert "Session restored from Redis" in log and "Session created" in log
    assert pairing.token not in log
    assert pairing.token[:16] not in log
