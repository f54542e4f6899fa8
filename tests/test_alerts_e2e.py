"""Missed check-ins with the real socket.io-client: pushed by the server within a second."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.support.flows import check_in, eventually, only, pair
from tests.support.nodeclient import NodeDriver

SECRET = "test-secret-0123456789"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def arm(pairing: Any, reminder: float, alert: float) -> dict[str, Any]:
    pairing.tracked.emit(
        "setTimers",
        {"sessionToken": pairing.token, "reminderTimeMinutes": reminder, "alertTimeMinutes": alert},
    )
    timers: dict[str, Any] = only(await pairing.tracked.expect("timersSet"))
    return timers


async def test_trackers_hear_a_missed_check_in_within_a_second_without_polling(
    node: NodeDriver, start_server: Any, transport: str
) -> None:
    server = await start_server()
    pairing = await pair(node, server.url, transport)
    await check_in(pairing.tracked, pairing.token)
    await pairing.tracker.expect("checkInReceived")
    timers = await arm(pairing, 0.005, 0.01)  # 300 ms, 600 ms
    reminder = only(await pairing.tracked.expect("checkInReminder", timeout=3))
    assert reminder == {
        "sessionToken": pairing.token,
        "reminderTimeEnd": timers["reminderTimeEnd"],
        "alertTimeEnd": timers["alertTimeEnd"],
    }
    missed = only(await pairing.tracker.expect("checkInMissed", timeout=3))
    received_at = now_ms()
    assert missed == {"sessionToken": pairing.token, "timestamp": timers["alertTimeEnd"]}
    assert 0 <= received_at - timers["alertTimeEnd"] < 1_000
    # The all clear: a check-in reaches the tracker, and the old deadline never fires again.
    confirmed = await check_in(pairing.tracked, pairing.token)
    received = only(await pairing.tracker.expect("checkInReceived"))
    assert received == {"sessionToken": pairing.token, "timestamp": confirmed}
    await pairing.tracker.expect_none("checkInMissed", within=0.3)


async def test_an_alert_due_while_the_server_was_down_fires_when_it_is_back(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url)
    pairing = await pair(node, server.url, "websocket")
    await check_in(pairing.tracked, pairing.token)
    timers = await arm(pairing, 0.005, 0.01)
    server.kill()  # no drain: as a crash
    await asyncio.sleep(1.0)  # the alert falls due while nobody runs
    await server.start()
    tracker = await node.connect(server.url, "websocket")
    tracker.emit("reconnectSession", {"sessionToken": pairing.token, "role": "tracker"})
    await tracker.expect("sessionReconnected")
    missed = only(await tracker.expect("checkInMissed"))
    assert missed == {"sessionToken": pairing.token, "timestamp": timers["alertTimeEnd"]}


async def test_trackers_reconnecting_as_the_server_starts_all_hear_the_alerts_due_meanwhile(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    """The test above with several sessions at once: the restarted server fires their alerts in
    its first rounds as their trackers reconnect; each tracker hears its alert, whichever came
    first (a join reads it pending, or the alert is told to a room the tracker is in). On a
    quiet machine the alerts mostly fire before the trackers are back; the moment in between
    is held deterministically by tests/test_interleavings.py."""
    server = await start_server(redis_url=redis_url)
    pairings = [await pair(node, server.url, "websocket") for _ in range(8)]
    due = {}
    for pairing in pairings:
        await check_in(pairing.tracked, pairing.token)
        due[pairing.token] = (await arm(pairing, 0.005, 0.01))["alertTimeEnd"]
    server.kill()
    await asyncio.sleep(1.0)
    await server.start()
    trackers = await asyncio.gather(*(node.connect(server.url, "websocket") for _ in pairings))
    for tracker, pairing in zip(trackers, pairings, strict=True):
        tracker.emit("reconnectSession", {"sessionToken": pairing.token, "role": "tracker"})
    for tracker, pairing in zip(trackers, pairings, strict=True):
        await tracker.expect("sessionReconnected")
        missed = only(await tracker.expect("checkInMissed"))
        assert missed == {"sessionToken": pairing.token, "timestamp": due[pairing.token]}


@pytest.fixture
async def receiver(unused_tcp_port: int) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver that fails the first request of every notice, then accepts."""
    calls: list[dict[str, Any]] = []
    seen: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append({"headers": dict(request.headers), "body": body})
        key = request.headers["Idempotency-Key"]
        if key not in seen:
            seen.add(key)
            return web.Response(status=503)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    yield f"http://127.0.0.1:{unused_tcp_port}/hook", calls
    await runner.cleanup()


async def test_missed_check_ins_and_all_clears_are_posted_signed_and_retried(
    node: NodeDriver, start_server: Any, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, calls = receiver
    server = await start_server(ALERT_WEBHOOK_URL=url, ALERT_WEBHOOK_SECRET=SECRET)
    pairing = await pair(node, server.url, "polling")
    await check_in(pairing.tracked, pairing.token)
    timers = await arm(pairing, 0.005, 0.01)
    await pairing.tracker.expect("checkInMissed", timeout=3)  # not held up by the failing hook
    cleared_at = await check_in(pairing.tracked, pairing.token)
    async with asyncio.timeout(10):
        while len(calls) < 4:
            await asyncio.sleep(0.05)
    session_id = hashlib.sha256(pairing.token.encode()).hexdigest()
    notices = []
    for call in calls:
        body = call["body"]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert call["headers"]["X-AllIsWell-Signature"] == expected
        assert pairing.token.encode() not in body
        notices.append((call["headers"]["Idempotency-Key"], json.loads(body)))
    # Each notice was tried twice (the receiver failed the first), with the same key.
    by_key: dict[str, list[dict[str, Any]]] = {}
    for key, notice in notices:
        by_key.setdefault(key, []).append(notice)
    assert sorted(len(tries) for tries in by_key.values()) == [2, 2]
    assert all(tries[0] == tries[1] for tries in by_key.values())
    missed, cleared = sorted((tries[0] for tries in by_key.values()), key=lambda n: n["timestamp"])
    assert (missed["event"], missed["sessionId"]) == ("checkInMissed", session_id)
    assert missed["timestamp"] == timers["alertTimeEnd"]
    assert (cleared["event"], cleared["timestamp"]) == ("allClear", cleared_at)

    # The server logs a delivery when the receiver's answer is back, after the receiver has
    # counted the call (a test in a busy parallel run read the log in between).
    async def log_text() -> str:
        return server.log_text()

    log = await eventually(log_text, lambda text: text.count("attempt 2: delivered") >= 2, 5)
    assert "attempt 1/8 failed (HTTP 503), retrying" in log
