"""Prometheus metrics of one server, in a registry of its own (several apps may share a process).

Counters are bumped where things happen (events, connections, alerts); what the store and the
Engine.IO server already know (Redis up, writes held, open connections) is read at scrape time.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from .persistence import RedisPersistence
from .relay import Relay
from .store import MemoryStore

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TRANSPORTS: Final = ("polling", "websocket")
PING_TIMEOUT_SECONDS: Final = 1.0
EVENT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every collector of one app. The alerts code calls `alert_fired` and `alert_delivered`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Client events: counted in plain numbers, made into metrics at a scrape (below).
        self._events = _EventCollector()
        r.register(self._events)
        self.connections_opened = Counter(
            "alliswell_connections_opened",
            "Socket.IO connections opened, by the transport they started on",
            ["transport"],
            registry=r,
        )
        self._opened: dict[str, Counter] = {}  # its child per transport, looked up once
        self.disconnections = Counter(
            "alliswell_disconnections",
            "Socket.IO connections closed, by reason",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "alliswell_errors",
            "Unexpected failures (a bug or a broken dependency), by where they happened",
            ["where"],
            registry=r,
        )
        self.refusals = Counter(
            "alliswell_refusals",
            "Requests refused by a quota or a defence against abuse, by quota",
            ["quota"],
            registry=r,
        )
        self.alerts_fired = Counter(
            "alliswell_alerts_fired", "Missed check-in alerts that became due", registry=r
        )
        self.alerts_delivered = Counter(
            "alliswell_alerts_delivered",
            "checkInMissed notices sent to trackers (one per tracker reached)",
            registry=r,
        )
        self.task_crashes = Counter(
            "alliswell_task_crashes",
            "Background tasks that crashed (each restarted after a delay), by task",
            ["task"],
            registry=r,
        )
        self._state = _StateCollector()
        r.register(self._state)

    # --- called by the code that sees things happen -------------------------------------------

    def event(self, name: str, outcome: str, seconds: float) -> None:
        """A client event was handled (the one metric bumped per event: plain numbers, no
        lock or child lookup as prometheus_client's labelled counter and histogram take,
        2% of a check-in's CPU)."""
        events = self._events
        counts = events.counts
        key = (name, outcome)
        count = counts.get(key)
        if count is None:
            events.created[key] = time.time()
            count = 0
        counts[key] = count + 1
        times = events.times.get(name)
        if times is None:
            events.created[name] = time.time()
            times = events.times[name] = [0.0] * (len(EVENT_BUCKETS) + 2)
        times[bisect.bisect_left(EVENT_BUCKETS, seconds)] += 1
        times[-1] += seconds

    def connected(self, transport: str) -> None:
        counter = self._opened.get(transport)
        if counter is None:
            counter = self._opened[transport] = self.connections_opened.labels(transport)
        counter.inc()

    def disconnected(self, reason: str) -> None:
        self.disconnections.labels(reason).inc()

    def error(self, where: str) -> None:
        self.errors.labels(where).inc()

    def refused(self, quota: str) -> None:
        """A client was refused by `quota` (a setting's name in lower case, or a defence)."""
        self.refusals.labels(quota).inc()

    def task_crashed(self, task: str) -> None:
        """A supervised background task crashed (tasks.supervise restarts it)."""
        self.task_crashes.labels(task).inc()

    def alert_fired(self) -> None:
        """An alert became due for a session (count it once, however many trackers hear it)."""
        self.alerts_fired.inc()

    def alert_delivered(self, trackers: int = 1) -> None:
        """`checkInMissed` went out to `trackers` connected trackers."""
        self.alerts_delivered.inc(trackers)

    # --- scraping ------------------------------------------------------------------------------

    def watch(self, sio: Any, store: MemoryStore) -> None:
        """Report the live state of this Socket.IO server and store at every scrape."""
        self._state.sio = sio
        self._state.store = store

    async def render(self) -> bytes:
        """The text exposition, after timing one PING to Redis (when there is one)."""
        self._state.redis_ping_seconds = await _ping(self._state.store)
        return generate_latest(self.registry)


class _EventCollector(Collector):
    """alliswell_events (a counter by event and outcome) and alliswell_event_seconds (a
    histogram by event), as prometheus_client's Counter and Histogram expose them."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        # Per event: how many took at most each bucket's bound (then more than the last),
        # and the sum of their seconds.
        self.times: dict[str, list[float]] = {}
        self.created: dict[tuple[str, str] | str, float] = {}  # when each series began

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "alliswell_events",
            "Client events handled, by name and outcome (ok, rejected, error)",
            labels=["event", "outcome"],
        )
        for key, handled in list(self.counts.items()):
            events.add_metric(list(key), handled, created=self.created[key])
        yield events
        seconds = HistogramMetricFamily(
            "alliswell_event_seconds", "Time to handle a client event, by name", labels=["event"]
        )
        for name, times in list(self.times.items()):
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for bound, count in zip((*EVENT_BUCKETS, math.inf), times, strict=False):
                total += count
                buckets.append((_bound(bound), total))
            seconds.add_metric([name], buckets, sum_value=times[-1])
            seconds.add_sample(
                "alliswell_event_seconds_created", {"event": name}, self.created[name]
            )
        yield seconds


def _bound(bound: float) -> str:
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sio: Any = None
        self.store: MemoryStore | None = None
        self.redis_ping_seconds = math.nan

    def collect(self) -> Iterator[Metric]:
        if self.sio is not None:
            open_by_transport = dict.fromkeys(TRANSPORTS, 0)
            for socket in list(self.sio.eio.sockets.values()):
                if not socket.closed:
                    open_by_transport["websocket" if socket.upgraded else "polling"] += 1
            connections = GaugeMetricFamily(
                "alliswell_connections", "Open connections, by transport", labels=["transport"]
            )
            for transport, count in open_by_transport.items():
                connections.add_metric([transport], count)
            yield connections
        store = self.store
        if store is None:
            return
        yield GaugeMetricFamily(
            "alliswell_sessions_in_memory", "Session records held in memory", value=len(store)
        )
        if not isinstance(store, RedisPersistence):
            return
        yield GaugeMetricFamily(
            "alliswell_redis_up", "1 while Redis answers, 0 during an outage", value=store.answering
        )
        yield GaugeMetricFamily(
            "alliswell_redis_writes_held",
            "Sessions changed during a Redis outage and not yet written",
            value=store.held,
        )
        yield CounterMetricFamily(
            "alliswell_redis_failures",
            "Redis commands that failed (each marks Redis away until it answers again)",
            value=store.failures,
        )
        yield CounterMetricFamily(
            "alliswell_redis_data_lost",
            "Times Redis was found without this server's data (restarted without persistence, "
            "flushed): each time every session and deadline held here was written back",
            value=store.data_losses,
        )
        yield CounterMetricFamily(
            "alliswell_write_conflicts",
            "Session writes another instance changed first (each change made again and written)",
            value=store.conflicts,
        )
        instances = store.instances
        yield GaugeMetricFamily(
            "alliswell_instances_alive",
            "Server instances with a recent heartbeat, this one included (NaN while this "
            "instance's own heartbeat does not go through: unknown)",
            value=len(instances.alive()) if instances.fresh() else math.nan,
        )
        relay = getattr(self.sio, "manager", None)
        if isinstance(relay, Relay):
            yield CounterMetricFamily(
                "alliswell_relay_published",
                "Events published for sockets of other instances",
                value=relay.published,
            )
            yield CounterMetricFamily(
                "alliswell_relay_failures",
                "Events for other instances that could not be published (dropped)",
                value=relay.failures,
            )
        yield GaugeMetricFamily(
            "alliswell_redis_ping_seconds",
            "Round trip of a PING to Redis at this scrape (NaN when it did not answer)",
            value=self.redis_ping_seconds,
        )


async def _ping(store: MemoryStore | None) -> float:
    if not isinstance(store, RedisPersistence) or not store.available:
        return math.nan
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PING_TIMEOUT_SECONDS):
            await store.probe()  # a failure marks nothing: the heartbeat judges Redis
    except (RedisError, OSError, TimeoutError):
        return math.nan
    return time.perf_counter() - started
