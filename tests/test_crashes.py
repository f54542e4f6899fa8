"""The sweep of a dead instance's sessions (server/crashes.py): exactly one survivor tells each
session once, on a real Redis, clock injected. End to end with kill -9: test_instances_crashing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

import pytest
from redis import asyncio as aioredis

from server import keys
from server.crashes import Bindings, Sweeper
from server.events import Events
from server.instances import Instances
from server.models import Session
from server.persistence import RedisStore
from server.presence import Role, trackers_room
from server.redislane import Lane
from server.store import StoreUnavailable
from tests.support.fakes import FakeClock, FakeSocketIO, beat_alone

T1, T2 = "a1" * 32, "b2" * 32


class Teller:
    """Stands in for Events.instance_died: remembers whom it was asked to tell."""

    def __init__(self, failing: int = 0) -> None:
        self.told: list[tuple[str, frozenset[Role]]] = []
        self.failing = failing  # how many calls fail as if Redis were away

    async def __call__(self, token: str, roles: Collection[Role]) -> None:
        if self.failing:
            self.failing -= 1
            raise StoreUnavailable
        self.told.append((token, frozenset(roles)))


async def test_exactly_one_survivor_tells_each_session_of_a_dead_instance_once(
    server_redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    bindings = Bindings(server_redis)
    await bindings.bound("dead0001.app", T1, Role.TRACKED)
    await bindings.bound("dead0001.phone", T2, Role.TRACKER)
    await bindings.bound("dead0001.tablet", T2, Role.TRACKER)
    tellers = [Teller(), Teller()]
    sweepers = [Sweeper(Instances(clock), bindings, teller) for teller in tellers]

    told = await asyncio.gather(*(sweeper.sweep("dead0001") for sweeper in sweepers))

    assert sorted(told) == [0, 2]
    assert sorted(tellers[0].told + tellers[1].told) == [
        (T1, frozenset({Role.TRACKED})),
        (T2, frozenset({Role.TRACKER})),
    ]
    assert await server_redis.exists(keys.instance_sessions("dead0001")) == 0


@pytest.mark.parametrize("lane", [False, True], ids=["pool", "lane"])
async def test_a_socket_that_left_is_not_in_its_instances_sweep(
    server_redis: aioredis.Redis, lane: bool
) -> None:
    # The server binds and leaves down the lane (server/redislane.py); the pool's client too.
    through = Lane(server_redis, 2.0) if lane else None
    bindings = Bindings(server_redis, through)
    await bindings.bound("dead0002.app", T1, Role.TRACKED)
    await bindings.bound("dead0002.phone", T1, Role.TRACKER)
    await bindings.bound("dead0002.tablet", T2, Role.TRACKER)
    await bindings.left("dead0002.app", [(T1, Role.TRACKED)])
    await bindings.left("dead0002.tablet", [(T2, Role.TRACKER)])
    if through is not None:
        await through.close()
    teller = Teller()

    assert await Sweeper(Instances(FakeClock()), bindings, teller).sweep("dead0002") == 1
    assert teller.told == [(T1, frozenset({Role.TRACKER}))]


async def test_a_session_not_told_while_redis_was_away_is_told_on_the_next_try(
    server_redis: aioredis.Redis,
) -> None:
    bindings = Bindings(server_redis)
    await bindings.bound("dead0003.app", T1, Role.TRACKED)
    await bindings.bound("dead0003.app", T2, Role.TRACKED)
    teller = Teller(failing=1)
    sweeper = Sweeper(Instances(FakeClock()), bindings, teller)

    assert await sweeper.sweep("dead0003") == 1
    assert await sweeper.sweep("dead0003") == 1  # its own claim: it goes on
    assert sorted(token for token, _ in teller.told) == [T1, T2]
    assert await sweeper.sweep("dead0003") == 0


async def survivor_of(server_redis: aioredis.Redis) -> tuple[Events, FakeSocketIO, str]:
    """An instance (with its store and handlers) that has seen another one die."""
    clock = FakeClock()
    instances = Instances(clock, server_redis)
    dead = Instances(clock, server_redis)
    for instance in (dead, instances):
        await instance.beat()
    await beat_alone(instances, clock)
    store = RedisStore(clock, server_redis, instances)
    await store.start()
    sio = FakeSocketIO()
    events = Events(sio, store, clock, code_grace_ms=60_000, instances=instances)  # type: ignore[arg-type]
    return events, sio, dead.id


async def test_trackers_are_told_when_the_tracked_app_was_on_the_dead_instance(
    server_redis: aioredis.Redis,
) -> None:
    events, sio, dead = await survivor_of(server_redis)
    here = f"{events.instances.id}.phone"
    await events.store.create(
        T1, Session(tracked_socket_id=f"{dead}.app", tracker_socket_ids=(here,))
    )
    await sio.enter_room(here, trackers_room(T1))

    await events.instance_died(T1, {Role.TRACKED})

    assert sio.to(here) == [None]  # trackedPersonDisconnected, no payload
    assert sio.sent == [(here, "trackedPersonDisconnected", None)]
    stored = await events.store.current(T1)
    assert stored == Session(tracked_socket_id=None, tracker_socket_ids=(here,), revision=2)


async def test_nobody_is_told_of_a_socket_that_is_back_on_another_instance(
    server_redis: aioredis.Redis,
) -> None:
    events, sio, dead = await survivor_of(server_redis)
    app, phone = f"{events.instances.id}.app", f"{events.instances.id}.phone"
    # The app came back here before the sweep; the tracker on the dead instance too.
    await events.store.create(
        T1, Session(tracked_socket_id=app, tracker_socket_ids=(f"{dead}.phone", phone))
    )
    await sio.enter_room(phone, trackers_room(T1))

    await events.instance_died(T1, {Role.TRACKED, Role.TRACKER})

    assert sio.sent == []  # the app is connected, and it still has a tracker
    stored = await events.store.current(T1)
    assert stored is not None and stored.tracker_socket_ids == (phone,)


async def test_the_tracked_app_is_told_when_its_last_tracker_was_on_the_dead_instance(
    server_redis: aioredis.Redis,
) -> None:
    events, sio, dead = await survivor_of(server_redis)
    app = f"{events.instances.id}.app"
    await events.store.create(T1, Session(tracked_socket_id=app, tracker_socket_ids=(f"{dead}.x",)))

    await events.instance_died(T1, {Role.TRACKER})

    assert sio.sent == [(app, "trackerDisconnected", None)]


async def test_an_instance_found_dead_by_the_heartbeat_is_swept_without_being_asked(
    server_redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    survivor, dead = Instances(clock, server_redis), Instances(clock, server_redis)
    for instance in (dead, survivor):
        await instance.beat()
    bindings = Bindings(server_redis)
    await bindings.bound(f"{dead.id}.app", T1, Role.TRACKED)
    teller = Teller()
    sweeping = asyncio.create_task(Sweeper(survivor, bindings, teller).run_forever())
    try:
        await beat_alone(survivor, clock)
        async with asyncio.timeout(2):
            while not teller.told:
                await asyncio.sleep(0.01)
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
    assert teller.told == [(T1, frozenset({Role.TRACKED}))]
