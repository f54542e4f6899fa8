"""Disconnect notices, as the real socket.io-client sees them.

"Killing the transport" drops the websocket's TCP connection without a close frame, as when a
phone loses its network: the server sees a transport close. A client-side ``disconnect()`` is
the app leaving on purpose.
"""

from __future__ import annotations

import pytest

from tests.support.flows import check_in, only, pair, track

pytestmark = pytest.mark.node


@pytest.fixture(params=["lean", "stock"])
def websocket_driver(request: pytest.FixtureRequest) -> str:
    """Run on engine.io's stock WebSocket driver too (WEBSOCKET_DRIVER=stock, the way back)."""
    return str(request.param)


async def test_every_tracker_is_told_when_the_tracked_person_disconnects(server, node, transport):
    p = await pair(node, server.url, transport)
    second = await node.connect(server.url, transport)
    await track(p.tracked, second, p.code)

    await p.tracked.disconnect()

    assert await p.tracker.expect("trackedPersonDisconnected") == []
    assert await second.expect("trackedPersonDisconnected") == []


async def test_trackers_are_told_when_the_tracked_persons_connection_drops(server, node, transport):
    p = await pair(node, server.url, transport)

    await p.tracked.kill_transport()

    assert await p.tracker.expect("trackedPersonDisconnected") == []


async def test_the_tracked_person_is_told_when_the_last_trackers_connection_drops(
    server, node, transport
):
    p = await pair(node, server.url, transport)

    await p.tracker.kill_transport()

    assert await p.tracked.expect("trackerDisconnected") == []


async def test_the_tracked_person_is_told_when_the_last_trackers_engine_closes(
    server, node, transport
):
    p = await pair(node, server.url, transport)
    await p.tracker.wait_upgrade()

    await p.tracker.close_engine()  # socket.io.engine.close() over the websocket

    assert await p.tracked.expect("trackerDisconnected") == []


async def test_no_tracker_disconnected_while_another_tracker_remains(server, node, transport):
    p = await pair(node, server.url, transport)
    second = await node.connect(server.url, transport)
    await track(p.tracked, second, p.code)

    await p.tracker.kill_transport()

    await p.tracked.expect_none("trackerDisconnected", within=0.5)
    await second.kill_transport()
    assert await p.tracked.expect("trackerDisconnected") == []


async def test_no_tracker_disconnected_when_the_last_tracker_leaves_on_purpose(
    server, node, transport
):
    p = await pair(node, server.url, transport)

    await p.tracker.disconnect()

    await p.tracked.expect_none("trackerDisconnected", within=0.7)
    assert p.tracked.connected


async def test_a_tracker_that_left_gets_no_more_check_ins(server, node, transport):
    p = await pair(node, server.url, transport)
    second = await node.connect(server.url, transport)
    await track(p.tracked, second, p.code)
    await p.tracker.disconnect()

    last = await check_in(p.tracked, p.token)

    assert only(await second.expect("checkInReceived"))["timestamp"] == last
    assert p.tracker.received("checkInReceived") == []


async def test_the_tracked_person_can_check_in_after_all_trackers_left(server, node, transport):
    p = await pair(node, server.url, transport)
    await p.tracker.kill_transport()
    await p.tracked.expect("trackerDisconnected")

    assert await check_in(p.tracked, p.token) > 0


async def test_a_tracker_can_come_back_after_the_tracked_person_dropped(server, node, transport):
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    await p.tracked.kill_transport()
    await p.tracker.expect("trackedPersonDisconnected")

    p.tracker.emit("getStatus", {"sessionToken": p.token})

    status = only(await p.tracker.expect("statusUpdate"))
    assert status["lastCheckIn"] == last
