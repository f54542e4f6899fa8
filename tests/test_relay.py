"""The relay between instances (server/relay.py), with real processes and a real Redis.

What PLATFORM.md warns of about python-socketio's AsyncRedisManager: its own raising pool, a
new pool on every publish error, events lost while Redis is away, a listener that comes back up
to 60 s later. Here: one instance alone publishes nothing; pushes cross again within seconds of
a Redis restart; a publish that fails is counted, not raised; the number of connections each
instance holds to Redis stays bounded through it all.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.support.flows import check_in, eventually, only, register
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import RedisServer, ServerProcess

HEARTBEATS_SEEN_S = 1.5  # instances refresh who is alive every second


async def published(server: ServerProcess) -> float:
    return value(await scrape(server.url), "alliswell_relay_published_total")


def redis_connections(server: RedisServer) -> int:
    """Clients connected to Redis, this probe excluded."""
    with redis.Redis.from_url(server.url) as probe:
        return int(probe.info("clients")["connected_clients"]) - 1


async def pair_across(
    node: NodeDriver, a: ServerProcess, b: ServerProcess
) -> tuple[NodeClient, NodeClient, str]:
    tracked = await node.connect(a.url, "websocket")
    tracker = await node.connect(b.url, "websocket")
    code, _ = await register(tracked)
    tracker.emit("trackCode", code)
    token = only(await tracker.expect("trackingStarted"))["sessionToken"]
    assert only(await tracked.expect("trackerConnected")) == {"sessionToken": token}
    return tracked, tracker, token


async def test_a_lone_instance_publishes_nothing(
    start_server, redis_url: str, node: NodeDriver
) -> None:
    a = await start_server(redis_url)
    tracked = await node.connect(a.url, "websocket")
    tracker = await node.connect(a.url, "websocket")
    code, _ = await register(tracked)
    tracker.emit("trackCode", code)
    token = only(await tracker.expect("trackingStarted"))["sessionToken"]
    await check_in(tracked, token)
    await tracker.expect("checkInReceived")
    assert await published(a) == 0

    # A second instance appears: a push for a room may now have members there too.
    await start_server(redis_url)
    await asyncio.sleep(HEARTBEATS_SEEN_S)
    await check_in(tracked, token)
    await tracker.expect("checkInReceived")
    assert await published(a) >= 1
    samples = await scrape(a.url)
    assert value(samples, "alliswell_instances_alive") == 2


@pytest.mark.timeout(90)
async def test_pushes_cross_again_soon_after_redis_restarts(
    start_server, make_redis_server, node: NodeDriver
) -> None:
    store = make_redis_server(appendonly=True)
    a = await start_server(store.url, REDIS_MAX_CONNECTIONS="8")
    b = await start_server(store.url, REDIS_MAX_CONNECTIONS="8")
    await asyncio.sleep(HEARTBEATS_SEEN_S)
    tracked, tracker, token = await pair_across(node, a, b)
    confirmed = await check_in(tracked, token)
    assert only(await tracker.expect("checkInReceived"))["timestamp"] == confirmed
    before = redis_connections(store)

    store.kill()
    # While Redis is away: the check-in is confirmed (held), the push cannot cross: counted.
    await check_in(tracked, token)
    await eventually(
        lambda: scrape(a.url),
        lambda s: value(s, "alliswell_relay_failures_total") >= 1,
        within=10,
    )
    await asyncio.sleep(3)  # long enough for any backoff of the listener to reach its cap
    store.start()
    for server in (a, b):
        await eventually(
            lambda server=server: scrape(server.url),
            lambda s: value(s, "alliswell_redis_up") == 1,
            within=15,
        )

    # The listener is back within a moment of Redis (not after a backoff of seconds, in which
    # every push across would be lost): the first check-in after that reaches B's tracker.
    await asyncio.sleep(0.35)
    confirmed = await check_in(tracked, token)
    await eventually(
        lambda: asyncio.sleep(0, tracker.received("checkInReceived")),
        lambda got: confirmed in [only(args)["timestamp"] for args in got],
        within=2,
    )
    # Each instance holds a bounded number of connections: no pool was leaked on the way.
    assert redis_connections(store) <= max(before, 2 * 8), (before, redis_connections(store))
    for server in (a, b):
        assert "Traceback" not in server.log_text()
