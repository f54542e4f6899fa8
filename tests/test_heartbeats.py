"""Heartbeats (server/instances.py): which instances are alive, on a real Redis, clock injected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from server.instances import ALIVE_MS, Instances, owner
from server.persistence import connect
from tests.support.fakes import FakeClock


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url, timeout=2, max_connections=4)
    yield client
    await client.aclose()


def test_a_socket_id_names_its_instance() -> None:
    assert owner("0a1b2c3d.AbC-_xyz") == "0a1b2c3d"
    assert owner("AbC-_xyzNodeSid") is None  # made by the Node server, or anyone else


async def test_an_instance_that_stops_beating_is_dead_after_a_few_seconds(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    a, b = Instances(clock, redis), Instances(clock, redis)
    for instance in (a, b, a):
        await instance.beat()
    assert a.alive() == b.alive() == {a.id, b.id}
    assert a.is_live(f"{b.id}.sid") and not a.is_local(f"{b.id}.sid")

    for _ in range(ALIVE_MS // 1000 + 1):  # b is gone: only a beats, every second
        clock.now += 1000
        await a.beat()
    assert a.alive() == {a.id} and not a.others
    assert not a.is_live(f"{b.id}.sid")
    assert a.left_by(f"{b.id}.sid") == clock.now - (ALIVE_MS // 1000 + 1) * 1000


async def test_after_its_own_outage_an_instance_waits_before_declaring_others_dead(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    a, b = Instances(clock, redis), Instances(clock, redis)
    for instance in (a, b, a):
        await instance.beat()
    clock.now += 3 * ALIVE_MS  # nobody could beat (Redis away); a is first back
    await a.beat()
    assert a.alive() == {a.id, b.id}  # b may just not have had its turn yet
    clock.now += 1000
    await b.beat()
    await a.beat()
    assert a.alive() == {a.id, b.id}
    for _ in range(ALIVE_MS // 1000 + 1):  # b really is gone now; a beats every second
        clock.now += 1000
        await a.beat()
    assert a.alive() == {a.id}


async def test_a_clean_exit_is_seen_at_the_next_beat(redis: aioredis.Redis) -> None:
    clock = FakeClock()
    a, b = Instances(clock, redis), Instances(clock, redis)
    for instance in (a, b, a):
        await instance.beat()
    await b.leave()
    clock.now += 1000
    await a.beat()
    assert a.alive() == {a.id}
