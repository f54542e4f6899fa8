"""The guard's accounting of one socket's events in flight, without a server."""

from __future__ import annotations

import asyncio

from server.guard import EVENT_OF, Guard
from server.metrics import Metrics
from server.settings import Settings


def guard(limit: int) -> Guard:
    return Guard(Settings(events_in_flight_per_connection=limit), Metrics())


async def test_a_socket_at_its_limit_waits_for_a_slot_and_a_second_waiter_is_refused() -> None:
    g = guard(2)
    assert g.begin("a") and g.begin("a")
    held = asyncio.ensure_future(g.admit_event("a"))
    await asyncio.sleep(0)

    assert await g.admit_event("a") is False  # a second message while one is held: insisting
    assert await g.admit_event("b") is True  # other sockets are not held
    g.end("a")
    assert await asyncio.wait_for(held, 1) is True


async def test_a_departing_socket_waits_for_its_events_and_starts_no_new_one() -> None:
    g = guard(16)
    assert g.begin("a")
    settling = asyncio.ensure_future(g.settle("a", within=5))
    await asyncio.sleep(0)

    assert g.begin("a") is False
    assert not settling.done()
    g.end("a")
    assert await asyncio.wait_for(settling, 1) is True
    g.forget("a")
    assert g.in_flight("a") == 0


async def test_a_departing_socket_waits_no_longer_than_told() -> None:
    g = guard(16)
    g.begin("a")

    assert await g.settle("a", within=0.05) is False


def test_connections_past_the_limit_per_address_are_refused_and_counted() -> None:
    g = Guard(Settings(connections_per_address=2), Metrics())

    assert [g.open_session(f"s{i}", "192.0.2.1") for i in range(3)] == [True, True, False]
    assert g.open_session("t", "192.0.2.2")
    g.forget("s0")
    assert g.open_session("s3", "192.0.2.1")


async def test_an_event_that_disconnects_its_own_socket_does_not_wait_for_itself() -> None:
    g = guard(16)
    g.begin("a")
    EVENT_OF.set("a")

    assert await asyncio.wait_for(g.settle("a", within=5), 1) is True
