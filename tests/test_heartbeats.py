"""Heartbeats (server/instances.py): which instances are alive, on a real Redis, clock injected."""

from __future__ import annotations

from redis import asyncio as aioredis

from server.instances import ALIVE_MS, Instances, owner
from tests.support.fakes import FakeClock, beat_alone


async def two_beating(server_redis: aioredis.Redis) -> tuple[FakeClock, Instances, Instances]:
    """Two instances that have each seen the other's heartbeat."""
    clock = FakeClock()
    a, b = Instances(clock, server_redis), Instances(clock, server_redis)
    for instance in (a, b, a):
        await instance.beat()
    return clock, a, b


def test_a_socket_id_names_its_instance() -> None:
    assert owner("0a1b2c3d.AbC-_xyz") == "0a1b2c3d"
    assert owner("AbC-_xyzNodeSid") is None  # made by the Node server, or anyone else


async def test_an_instance_that_stops_beating_is_dead_after_a_few_seconds(
    server_redis: aioredis.Redis,
) -> None:
    clock, a, b = await two_beating(server_redis)
    assert a.alive() == b.alive() == {a.id, b.id}
    assert a.is_live(f"{b.id}.sid") and not a.is_local(f"{b.id}.sid")

    await beat_alone(a, clock)  # b is gone
    assert a.alive() == {a.id} and not a.others
    assert not a.is_live(f"{b.id}.sid")
    assert a.left_by(f"{b.id}.sid") == clock.now - (ALIVE_MS // 1000 + 1) * 1000


async def test_after_its_own_outage_an_instance_waits_before_declaring_others_dead(
    server_redis: aioredis.Redis,
) -> None:
    clock, a, b = await two_beating(server_redis)
    clock.now += 3 * ALIVE_MS  # nobody could beat (Redis away); a is first back
    await a.beat()
    assert a.alive() == {a.id, b.id}  # b may just not have had its turn yet
    clock.now += 1000
    await b.beat()
    await a.beat()
    assert a.alive() == {a.id, b.id}
    await beat_alone(a, clock)  # b really is gone now
    assert a.alive() == {a.id}


async def test_a_clean_exit_is_seen_at_the_next_beat(server_redis: aioredis.Redis) -> None:
    clock, a, b = await two_beating(server_redis)
    await b.leave()
    clock.now += 1000
    await a.beat()
    assert a.alive() == {a.id}


async def test_an_instance_not_heard_of_yet_counts_alive_until_a_read_says_otherwise(
    server_redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    a = Instances(clock, server_redis)
    await a.beat()
    assert not a.others
    b = Instances(clock, server_redis)
    await b.beat()  # b started after a's last read: a has not heard of it

    assert a.is_live(f"{b.id}.sid")  # not dead for being new
    assert a.others  # a push for a room may have members on b
    clock.now += 1000
    await a.beat()
    assert a.alive() == {a.id, b.id} and a.is_live(f"{b.id}.sid")


async def test_an_instance_named_by_a_socket_but_absent_from_the_heartbeats_has_left(
    server_redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    a = Instances(clock, server_redis)
    await a.beat()
    assert a.is_live("0badc0de.sid")  # asked before any read answered for it
    await a.beat()  # a read that began after the question: no heartbeat, it left
    assert not a.is_live("0badc0de.sid") and not a.others
    assert a.found_dead.get_nowait() == "0badc0de"


async def test_an_instance_whose_heartbeat_stops_is_found_dead_once(
    server_redis: aioredis.Redis,
) -> None:
    clock, a, b = await two_beating(server_redis)
    await beat_alone(a, clock)
    await a.beat()
    assert a.found_dead.get_nowait() == b.id
    assert a.found_dead.empty()
    # Its stale heartbeat is what a newly started instance finds too.
    c = Instances(clock, server_redis)
    await c.beat()
    assert not c.is_live(f"{b.id}.sid")
    assert c.found_dead.get_nowait() == b.id
    assert c.found_dead.empty()
