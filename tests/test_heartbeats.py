"""Heartbeats (server/instances.py): which instances are alive, on a real Redis and its clock."""

from __future__ import annotations

import asyncio
import time

from redis import asyncio as aioredis

from server.instances import Instances, owner
from tests.support.fakes import START, FakeClock, beat_alone

ALIVE_MS = 500  # short: liveness runs on Redis's clock, so time really passes in these tests


async def two_beating(server_redis: aioredis.Redis) -> tuple[FakeClock, Instances, Instances]:
    """Two instances that have each seen the other's heartbeat."""
    clock = FakeClock()
    a = Instances(clock, server_redis, alive_ms=ALIVE_MS)
    b = Instances(clock, server_redis, alive_ms=ALIVE_MS)
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

    started = time.monotonic()
    await beat_alone(a, clock)  # b is gone
    elapsed_ms = (time.monotonic() - started) * 1000
    assert a.alive() == {a.id} and not a.others
    assert not a.is_live(f"{b.id}.sid")
    # When b was last seen, in this host's time (the fake clock moved as much as Redis's).
    left = a.left_by(f"{b.id}.sid")
    assert left is not None
    assert clock.now - elapsed_ms - 200 <= left <= clock.now - ALIVE_MS, (left, clock.now)


async def test_after_its_own_outage_an_instance_waits_before_declaring_others_dead(
    server_redis: aioredis.Redis,
) -> None:
    clock, a, b = await two_beating(server_redis)
    await asyncio.sleep(3 * ALIVE_MS / 1000)  # nobody could beat (Redis away); a is first back
    await a.beat()
    assert a.alive() == {a.id, b.id}  # b may just not have had its turn yet
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


async def test_hosts_whose_clocks_are_seconds_apart_both_stay_alive(
    server_redis: aioredis.Redis,
) -> None:
    # B's host clock is 10 s behind A's: scored by each host's clock, A would count B dead
    # (its heartbeat looks 10 s old) the moment it beat, and B's sockets with it.
    a = Instances(FakeClock(START), server_redis)
    b = Instances(FakeClock(START - 10_000), server_redis)
    for instance in (a, b, a, b):
        await instance.beat()
    assert a.alive() == b.alive() == {a.id, b.id}
    assert a.is_live(f"{b.id}.sid") and b.is_live(f"{a.id}.sid")


async def test_the_heartbeat_tells_its_listeners_whether_redis_answered(
    server_redis: aioredis.Redis,
) -> None:
    heard: list[str] = []

    class Listener:
        def beat_ok(self, marker: str) -> None:
            heard.append(f"ok {marker}")

        def beat_failed(self, exc: BaseException) -> None:
            heard.append(f"failed {exc.__class__.__name__}")

    instances = Instances(FakeClock(), server_redis)
    instances.listeners.append(Listener())
    assert await instances.check()
    assert heard == [f"ok {instances.marker}"] and instances.fresh()
    # The marker is written once: every beat, of every instance, reads the same one.
    other = Instances(FakeClock(), server_redis)
    await other.beat()
    assert other.marker == instances.marker


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
    c = Instances(clock, server_redis, alive_ms=ALIVE_MS)
    await c.beat()
    assert not c.is_live(f"{b.id}.sid")
    assert c.found_dead.get_nowait() == b.id
    assert c.found_dead.empty()


async def test_a_redis_that_lost_its_data_kills_nobody(server_redis: aioredis.Redis) -> None:
    # Every heartbeat goes with the data: the first beat after finds only itself. The others
    # did not die of that, and get a period to beat again (else their sockets stop counting
    # and their people are told they left).
    _, a, b = await two_beating(server_redis)
    await server_redis.flushall()
    await a.beat()
    assert a.alive() == {a.id, b.id} and a.is_live(f"{b.id}.sid")
    assert a.found_dead.empty()
    await b.beat()
    await a.beat()
    assert a.alive() == {a.id, b.id}
