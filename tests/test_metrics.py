"""/metrics: Prometheus text with connections, events, errors, Redis and alerts, per app."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.app import create_app
from server.events import Events
from server.metrics import EVENT_BUCKETS, Metrics
from server.ops import METRICS
from server.persistence import RedisStore
from server.settings import Settings
from server.store import MemoryStore
from tests.support.fakes import FakeClock
from tests.support.flows import check_in, eventually, pair, unknown_token
from tests.support.metrics import parse, scrape, value

RECOVERY_WITHIN_S = 8.0


async def test_metrics_start_at_zero_and_name_every_family(server):
    samples = await scrape(server.url)

    names = {name for name, _ in samples}
    assert {
        "alliswell_connections",
        "alliswell_sessions_in_memory",
        "alliswell_alerts_fired_total",
        "alliswell_alerts_delivered_total",
    } <= names
    assert value(samples, "alliswell_connections", transport="polling") == 0
    assert value(samples, "alliswell_connections", transport="websocket") == 0
    assert not any(name.startswith("alliswell_redis") for name in names)  # no REDIS_URL


@pytest.mark.node
async def test_events_are_counted_by_name_and_outcome(server, node):
    p = await pair(node, server.url, "polling")
    await check_in(p.tracked, p.token)
    await check_in(p.tracked, p.token)
    p.tracked.emit("checkIn", None)  # malformed
    await p.tracked.expect("error")
    p.tracked.emit("checkIn", unknown_token())  # well-formed, no such session
    await p.tracked.expect("error")

    samples = await scrape(server.url)

    assert value(samples, "alliswell_events_total", event="registerCode", outcome="ok") == 1
    assert value(samples, "alliswell_events_total", event="trackCode", outcome="ok") == 1
    assert value(samples, "alliswell_events_total", event="checkIn", outcome="ok") == 2
    assert value(samples, "alliswell_events_total", event="checkIn", outcome="rejected") == 2
    assert value(samples, "alliswell_events_total", event="checkIn", outcome="error") == 0
    assert value(samples, "alliswell_event_seconds_count", event="checkIn") == 4
    assert value(samples, "alliswell_sessions_in_memory") == 1


@pytest.mark.node
async def test_connections_are_counted_by_transport(server, node):
    polling = await node.connect(server.url, "polling", transports=["polling"])
    websocket = await node.connect(server.url, "websocket")

    samples = await scrape(server.url)
    assert value(samples, "alliswell_connections", transport="polling") == 1
    assert value(samples, "alliswell_connections", transport="websocket") == 1
    assert value(samples, "alliswell_connections_opened_total", transport="polling") == 1
    assert value(samples, "alliswell_connections_opened_total", transport="websocket") == 1

    await polling.disconnect()
    await websocket.disconnect()
    samples = await eventually(
        lambda: scrape(server.url),
        lambda s: (
            value(s, "alliswell_connections", transport="polling")
            + value(s, "alliswell_connections", transport="websocket")
            == 0
        ),
    )
    assert value(samples, "alliswell_disconnections_total", reason="client disconnect") == 2


@pytest.mark.node
async def test_redis_failures_and_held_writes_show_during_an_outage(
    start_server, redis_server, node
):
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "polling")

    before = await scrape(server.url)
    assert value(before, "alliswell_redis_up") == 1
    assert value(before, "alliswell_redis_writes_held") == 0
    assert value(before, "alliswell_redis_failures_total") == 0
    assert 0 < value(before, "alliswell_redis_ping_seconds") < 1

    redis_server.kill()
    await check_in(p.tracked, p.token)
    await check_in(p.tracked, p.token)

    during = await scrape(server.url)
    assert value(during, "alliswell_redis_up") == 0
    assert value(during, "alliswell_redis_writes_held") == 1  # one session, changed twice
    assert value(during, "alliswell_redis_failures_total") >= 1
    assert math.isnan(value(during, "alliswell_redis_ping_seconds"))

    await asyncio.to_thread(redis_server.start)
    # Up as soon as Redis answers; the held writes follow once the write-back has settled
    # (Redis came back empty: every instance writes back first, see persistence.py).
    await eventually(
        lambda: scrape(server.url),
        lambda s: value(s, "alliswell_redis_up") == 1,
        within=RECOVERY_WITHIN_S,
    )
    await eventually(
        lambda: scrape(server.url),
        lambda s: value(s, "alliswell_redis_writes_held") == 0,
        within=RECOVERY_WITHIN_S,
    )


class Silent:
    """Stands in for the Socket.IO server: records what would be emitted."""

    def __init__(self) -> None:
        self.emitted: list[tuple[Any, ...]] = []

    async def emit(self, *args: Any, **kwargs: Any) -> None:
        self.emitted.append(args)


async def test_a_failing_handler_counts_as_an_error():
    metrics = Metrics()
    sio = Silent()
    events = Events(sio, MemoryStore(lambda: 0), lambda: 0, code_grace_ms=0, metrics=metrics)

    async def broken(sid: str, args: tuple[Any, ...]) -> None:
        raise RuntimeError("bug")

    await events._guarded("checkIn", broken)("sid-1", "x")

    samples = parse((await metrics.render()).decode())
    assert value(samples, "alliswell_events_total", event="checkIn", outcome="error") == 1
    assert value(samples, "alliswell_errors_total", where="event") == 1
    assert sio.emitted and sio.emitted[0][0] == "error"


async def test_alerts_code_counts_alerts_fired_and_delivered():
    metrics = Metrics()

    metrics.alert_fired()
    metrics.alert_delivered(trackers=3)

    samples = parse((await metrics.render()).decode())
    assert value(samples, "alliswell_alerts_fired_total") == 1
    assert value(samples, "alliswell_alerts_delivered_total") == 3


async def test_each_app_counts_in_its_own_registry():
    first, second = create_app(Settings()), create_app(Settings())  # no duplicate-metric error
    first_metrics = first[METRICS]

    first_metrics.alert_fired()

    assert (
        value(parse((await first_metrics.render()).decode()), "alliswell_alerts_fired_total") == 1
    )
    second_text = (await second[METRICS].render()).decode()
    assert value(parse(second_text), "alliswell_alerts_fired_total") == 0


async def test_a_request_that_fails_unexpectedly_counts_as_an_http_error():
    app = create_app(Settings())

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app.router.add_get("/broken", broken)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/broken")) as response:
                assert response.status == 500
            async with http.get(server.make_url("/nowhere")) as response:
                assert response.status == 404  # refused, not failed
        samples = parse((await app[METRICS].render()).decode())
        assert value(samples, "alliswell_errors_total", where="http") == 1
    finally:
        await server.close()


async def test_a_scrape_whose_ping_fails_observes_and_changes_nothing(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(FakeClock(), server_redis)
    await store.start()
    metrics = Metrics()
    metrics.watch(None, store)

    async def refused() -> None:
        raise RedisConnectionError("injected: the scrape's PING fails")

    monkeypatch.setattr(server_redis, "ping", refused)
    try:
        samples = parse((await metrics.render()).decode())
        assert math.isnan(value(samples, "alliswell_redis_ping_seconds"))
        # Not flipped into held-writes mode: the heartbeat, not a scrape, judges Redis.
        assert store.available and value(samples, "alliswell_redis_up") == 1
    finally:
        monkeypatch.undo()
        await store.close()


def test_the_event_metrics_read_as_prometheus_clients_own_counter_and_histogram() -> None:
    """Counted in plain numbers (the per-event path), exposed as prometheus_client would."""
    reference = CollectorRegistry()
    events = Counter(
        "alliswell_events",
        "Client events handled, by name and outcome (ok, rejected, error)",
        ["event", "outcome"],
        registry=reference,
    )
    seconds = Histogram(
        "alliswell_event_seconds",
        "Time to handle a client event, by name",
        ["event"],
        buckets=EVENT_BUCKETS,
        registry=reference,
    )
    ours = Metrics()
    observed = [
        ("checkIn", "ok", 0.0004),
        ("checkIn", "ok", 0.0025),  # on a bound: counted in it
        ("checkIn", "rejected", 3.0),  # past the last bound
        ("trackCode", "error", 0.01),
        ("checkIn", "ok", 0.001),
    ]
    for name, outcome, took in observed:
        ours.event(name, outcome, took)
        events.labels(name, outcome).inc()
        seconds.labels(name).observe(took)

    def lines(text: bytes) -> list[str]:
        # Creation times differ by when each was bumped: compared by name and labels only.
        return [
            line.rsplit(" ", 1)[0] if "_created" in line else line
            for line in text.decode().splitlines()
            if "alliswell_event" in line
        ]

    assert lines(generate_latest(ours.registry)) == lines(generate_latest(reference))
