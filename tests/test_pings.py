"""Pings of long-polling sessions: one list per tick of time, not a task per session."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from engineio import packet as eio

from server.pings import PollingPings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class PolledSocket:
    """What PollingPings uses of engine.io's AsyncSocket."""

    def __init__(self, sid: str, *, fails: bool = False) -> None:
        self.sid = sid
        self.last_ping: float | None = None
        self.closing = self.closed = False
        self.sent: list[int] = []
        self.fails = fails

    async def send(self, pkt: Any) -> None:
        if self.fails:
            raise RuntimeError("a send that fails")
        self.sent.append(pkt.packet_type)


async def run_for(pings: PollingPings, clock: Clock, seconds: float) -> None:
    step = pings.tick / 10
    for _ in range(round(seconds / step)):
        clock.now += step
        await pings.ping_due()


@pytest.mark.parametrize(("interval", "tick"), [(25, 1.0), (0.3, 0.075)])
async def test_a_session_is_pinged_one_interval_after_it_was_scheduled_and_only_once(
    interval: float, tick: float
) -> None:
    clock = Clock()
    pings = PollingPings(interval, clock=clock)
    assert pings.tick == tick  # a quarter of a short interval (tests), else a second
    socket = PolledSocket("a")
    pings.schedule(socket)
    await run_for(pings, clock, interval - tick / 2)
    assert socket.sent == [] and socket.last_ping is None
    before = time.time()
    await run_for(pings, clock, tick * 1.5)  # due at the interval, looked at within a tick
    assert socket.sent == [eio.PING]
    assert socket.last_ping is not None and socket.last_ping >= before  # the sweep reads it
    assert len(pings) == 0
    await run_for(pings, clock, interval * 3)  # the next cycle starts with the pong, not here
    assert socket.sent == [eio.PING]


async def test_sessions_closing_or_closed_are_not_pinged_and_one_failing_stops_no_other() -> None:
    clock = Clock()
    pings = PollingPings(25, clock=clock)
    closing, closed, failing, fine = (PolledSocket(sid) for sid in ("closing", "closed", "x", "ok"))
    failing.fails = True
    for socket in (closing, closed, failing, fine):
        pings.schedule(socket)
    closing.closing = True
    closed.closed = True
    await run_for(pings, clock, 26)
    assert (closing.sent, closed.sent, fine.sent) == ([], [], [eio.PING])
    assert closing.last_ping is None and closed.last_ping is None
    assert len(pings) == 0


async def test_sessions_scheduled_at_different_times_are_pinged_in_their_own_tick() -> None:
    clock = Clock()
    pings = PollingPings(10, clock=clock)
    first, second = PolledSocket("first"), PolledSocket("second")
    pings.schedule(first)
    await run_for(pings, clock, 5)
    pings.schedule(second)
    await run_for(pings, clock, 6)
    assert (first.sent, second.sent) == ([eio.PING], [])
    await run_for(pings, clock, 5)
    assert second.sent == [eio.PING]


class CountedSlots(dict[int, set[Any]]):
    looked_at = 0

    def pop(self, *args: Any) -> Any:
        self.looked_at += 1
        return super().pop(*args)


async def test_an_idle_wheel_does_not_walk_the_ticks_it_slept_through() -> None:
    clock = Clock()
    pings = PollingPings(25, clock=clock)
    pings._wheel.slots = slots = CountedSlots()
    clock.now += 10 * 24 * 3600  # ten days (864,000 ticks) before the first client
    await pings.ping_due()
    assert slots.looked_at == 0
    socket = PolledSocket("a")
    pings.schedule(socket)
    assert list(slots) == [math.ceil(clock.now + 25)]
    await run_for(pings, clock, 26)
    assert socket.sent == [eio.PING] and not slots
    assert slots.looked_at <= 26  # one per tick from the schedule on
