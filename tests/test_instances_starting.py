"""An instance that has just started, before the others have read its heartbeat.

A socket id names its instance (`<instance>.<random>`); an instance that another has not heard
of yet is not dead, and a push for a socket of it must travel. Each test pairs and pushes as
soon as the new instance answers HTTP, without waiting for heartbeats to be read: the window
where the other instance does not know it yet is open (up to a heartbeat period, 1 s).
The old server, which counted only the instances of its last heartbeat read as alive, lost
the tracker's check-ins there, recorded the tracked app as gone and retired the code.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.support.checkins import stored_record
from tests.support.flows import check_in, eventually, instance_of, only, register
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.node, pytest.mark.timeout(120)]

ROUNDS = 3
PUSHES = 5

StartServer = Callable[..., Awaitable[ServerProcess]]


async def instances_alive(server: ServerProcess) -> int:
    return int(value(await scrape(server.url), "alliswell_instances_alive"))


async def settled_alone(start_server: StartServer, redis_url: str) -> ServerProcess:
    """A long-running instance: it has read its own heartbeat and counts itself alone."""
    a = await start_server(redis_url=redis_url)
    await eventually(functools.partial(instances_alive, a), lambda n: n == 1, within=5)
    return a


async def pushes_reach(tracked: NodeClient, tracker: NodeClient, token: str) -> int:
    """Check-ins on the tracked side each reach the tracker, in order; returns the last."""
    for _ in range(PUSHES):
        confirmed = await check_in(tracked, token)
        received = only(await tracker.expect("checkInReceived", timeout=3))
        assert received == {"sessionToken": token, "timestamp": confirmed}
    return confirmed


@pytest.mark.parametrize("newcomer", ["tracker", "tracked"])
async def test_a_pairing_across_an_instance_that_just_started_is_whole_at_once(
    start_server: StartServer,
    redis_url: str,
    node: NodeDriver,
    redis: aioredis.Redis,
    newcomer: str,
) -> None:
    a = await settled_alone(start_server, redis_url)
    for _ in range(ROUNDS):
        b = await start_server(redis_url=redis_url)  # pairs at once: A has not read B's beat
        tracked = await node.connect((b if newcomer == "tracked" else a).url, "websocket")
        tracker = await node.connect((b if newcomer == "tracker" else a).url, "websocket")
        assert instance_of(tracked) != instance_of(tracker)
        code, _ = await register(tracked)

        tracker.emit("trackCode", code)
        token = only(await tracker.expect("trackingStarted"))["sessionToken"]

        # The tracker's instance counted the tracked app, on an instance it may not have
        # heard of yet, as connected: it is told, and the record names it.
        assert only(await tracked.expect("trackerConnected")) == {"sessionToken": token}
        record = await stored_record(redis, token)
        assert record["trackedSocketId"] == tracked.sid
        await pushes_reach(tracked, tracker, token)
        # The code is still the app's: a second tracker joins the same session.
        second = await node.connect(tracker.url, "websocket")
        second.emit("trackCode", code)
        assert only(await second.expect("trackingStarted")) == {"sessionToken": token}
        assert second.received("error") == []
        await asyncio.to_thread(b.stop)  # next round: a new instance
        for client in (tracked, tracker, second):
            if client.url == a.url:
                await client.disconnect()


async def test_in_a_rolling_deploy_pushes_reach_trackers_that_moved_to_the_new_instance(
    start_server: StartServer, redis_url: str, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a = await settled_alone(start_server, redis_url)
    old = await start_server(redis_url=redis_url)
    tracked = await node.connect(a.url, "websocket")
    tracker = await node.connect(old.url, "websocket")
    code, _ = await register(tracked)
    tracker.emit("trackCode", code)
    token = only(await tracker.expect("trackingStarted"))["sessionToken"]
    await tracked.expect("trackerConnected")
    last = None
    for _ in range(ROUNDS):
        # The deploy: a new instance starts, the old one drains and stops; its tracker
        # comes back on the new one at once, while A may not have heard of it yet.
        new = await start_server(redis_url=redis_url)
        await asyncio.to_thread(old.stop)
        await tracker.wait_disconnect()
        tracker = await node.connect(new.url, "websocket")
        tracker.emit("reconnectSession", {"sessionToken": token, "role": "tracker"})
        assert only(await tracker.expect("sessionReconnected")) == {
            "sessionToken": token,
            "role": "tracker",
        }
        if last is not None:  # a tracker that comes back hears the last check-in first
            assert only(await tracker.expect("checkInReceived")) == {
                "sessionToken": token,
                "timestamp": last,
            }
        last = await pushes_reach(tracked, tracker, token)
        assert (await stored_record(redis, token))["trackerSocketIds"] == [tracker.sid]
        old = new
