"""An instance killed with -9: the people whose sockets it held are told, by the survivors.

A crash is a transport close: within seconds of the instance being found dead (no heartbeat
for 5 s), trackers elsewhere hear `trackedPersonDisconnected` once, a tracked app elsewhere
whose last tracker was there hears `trackerDisconnected` once, and the records nobody touches
stop naming the dead sockets. Exactly one survivor tells them (two survive here).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.support.checkins import stored_record
from tests.support.flows import check_in, eventually, instance_of, only, register
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.node, pytest.mark.timeout(90)]

ALIVE_S = 5.0  # an instance without a heartbeat for this long is dead (server/instances.py)
TOLD_WITHIN_S = ALIVE_S + 5  # found dead, then swept: "within seconds"
ONCE_S = 1.5  # time for a second notice from the other survivor, had it sent one

StartServer = Callable[..., Awaitable[ServerProcess]]


async def instances_alive(server: ServerProcess) -> int:
    return int(value(await scrape(server.url), "alliswell_instances_alive"))


async def three(start_server: StartServer, redis_url: str) -> list[ServerProcess]:
    servers = [await start_server(redis_url=redis_url) for _ in range(3)]
    for server in servers:
        await eventually(functools.partial(instances_alive, server), lambda n: n == 3, within=5)
    return servers


async def paired(
    node: NodeDriver, tracked_on: ServerProcess, *trackers_on: ServerProcess
) -> tuple[NodeClient, list[NodeClient], str]:
    tracked = await node.connect(tracked_on.url, "websocket")
    code, _ = await register(tracked)
    trackers = []
    token = ""
    for server in trackers_on:
        tracker = await node.connect(server.url, "websocket")
        tracker.emit("trackCode", code)
        token = only(await tracker.expect("trackingStarted"))["sessionToken"]
        assert only(await tracked.expect("trackerConnected")) == {"sessionToken": token}
        trackers.append(tracker)
    return tracked, trackers, token


async def test_trackers_hear_that_the_tracked_person_dropped_when_its_instance_dies(
    start_server: StartServer, redis_url: str, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a, b, c = await three(start_server, redis_url)
    tracked, trackers, token = await paired(node, a, b, c)
    await check_in(tracked, token)
    for tracker in trackers:
        await tracker.expect("checkInReceived")

    a.kill()  # SIGKILL: A tells nobody
    assert await tracked.wait_disconnect() == "transport close"

    for tracker in trackers:
        assert await tracker.expect("trackedPersonDisconnected", timeout=TOLD_WITHIN_S) == []
    for tracker in trackers:
        await tracker.expect_none("trackedPersonDisconnected", within=ONCE_S)
    record = await stored_record(redis, token)
    assert record["trackedSocketId"] is None
    assert sorted(record["trackerSocketIds"]) == sorted(t.sid for t in trackers if t.sid)


async def test_a_tracked_app_hears_that_its_last_tracker_dropped_when_their_instance_dies(
    start_server: StartServer, redis_url: str, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a, b, c = await three(start_server, redis_url)
    alone, (on_c,), lone_token = await paired(node, a, c)  # its only tracker is on C
    kept, (also_on_c, on_a), kept_token = await paired(node, b, c, a)  # one more on A

    c.kill()
    assert await on_c.wait_disconnect() == "transport close"
    await also_on_c.wait_disconnect()

    assert await alone.expect("trackerDisconnected", timeout=TOLD_WITHIN_S) == []
    await alone.expect_none("trackerDisconnected", within=ONCE_S)
    await kept.expect_none("trackerDisconnected", within=0.1)  # A's tracker still watches
    assert (await stored_record(redis, lone_token))["trackerSocketIds"] == []
    kept_record = await stored_record(redis, kept_token)
    assert kept_record["trackerSocketIds"] == [on_a.sid]
    assert kept_record["trackedSocketId"] == kept.sid
    assert instance_of(on_a) == instance_of(alone)
    # Both sessions go on: check-ins still reach the trackers left.
    confirmed = await check_in(kept, kept_token)
    assert only(await on_a.expect("checkInReceived")) == {
        "sessionToken": kept_token,
        "timestamp": confirmed,
    }
