"""Deadlines in a real Redis: written with the record, claimed once across instances, leased."""

from __future__ import annotations

import asyncio

from redis import asyncio as aioredis

from server import keys, rules
from server.alerts import Alerts
from server.deadlines import RedisDeadlines
from server.events import Events
from server.persistence import RedisStore
from tests.support.fakes import MIN, START, FakeClock, FakeSocketIO, armed


async def test_deadlines_are_written_with_the_record_and_follow_it(
    server_redis: aioredis.Redis,
) -> None:
    store = RedisStore(FakeClock(), server_redis)
    await store.start()
    token = "ab" * 32
    await store.create(token, armed(START + 2 * MIN))
    scores = dict(await server_redis.zrange(keys.DEADLINES, 0, -1, withscores=True))
    assert scores == {
        f"alert:{token}".encode(): START + 2 * MIN,
        f"reminder:{token}".encode(): START + MIN,
    }
    await store.update(token, lambda s: rules.fire_alert(s, START + 2 * MIN))
    assert await server_redis.zcard(keys.DEADLINES) == 0  # pending: nothing left to wake up for


async def test_each_deadline_is_claimed_by_exactly_one_instance(
    server_redis: aioredis.Redis,
) -> None:
    due = {f"alert:{n:064x}": START + n for n in range(2_000)}
    await server_redis.zadd(keys.DEADLINES, due)
    instances = [RedisDeadlines(server_redis) for _ in range(4)]

    async def drain(deadlines: RedisDeadlines) -> list[tuple[str, str, int]]:
        got = []
        while batch := await deadlines.claim(START + 10_000, 50):
            got += batch
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(drain(d) for d in instances))
    claimed = [item for result in results for item in result]
    assert len(claimed) == 2_000
    assert {f"{k}:{t}" for k, t, _ in claimed} == set(due)
    assert all(when == START + int(token, 16) for _, token, when in claimed)
    assert sum(1 for r in results if r) > 1  # they really competed


async def test_a_claim_whose_instance_died_is_taken_over_after_the_lease(
    server_redis: aioredis.Redis,
) -> None:
    # Leases run on Redis's clock: the time really passes (a short lease).
    await server_redis.zadd(keys.DEADLINES, {"alert:" + "cd" * 32: START})
    crashed = RedisDeadlines(server_redis, lease_ms=1_000)
    survivor = RedisDeadlines(server_redis, lease_ms=1_000)
    assert await crashed.claim(START, 10) == [("alert", "cd" * 32, START)]
    assert await survivor.claim(START, 10) == []  # still leased
    await asyncio.sleep(1.1)
    taken = await survivor.claim(START, 10)
    assert taken == [("alert", "cd" * 32, START)]  # with its real due time
    await survivor.release(taken[0])
    assert await survivor.claim(START + 90_000, 10) == []


async def test_a_live_lease_holds_whatever_the_claimers_clocks_say(
    server_redis: aioredis.Redis,
) -> None:
    await server_redis.zadd(keys.DEADLINES, {"alert:" + "cd" * 32: START})
    holder = RedisDeadlines(server_redis, lease_ms=30_000)
    skewed = RedisDeadlines(server_redis, lease_ms=30_000)
    assert await holder.claim(START, 10) == [("alert", "cd" * 32, START)]
    # Another host whose clock runs 40 s ahead: a lease scored by host clocks would look run
    # out to it, and the alert would fire twice.
    assert await skewed.claim(START + 40_000, 10) == []


async def test_overdue_alerts_fire_after_a_restart_with_their_real_due_time(
    server_redis: aioredis.Redis,
) -> None:
    token = "ef" * 32
    before = RedisStore(FakeClock(), server_redis)
    await before.start()
    await before.create(token, armed(START + 2 * MIN))
    # A new process, ten minutes later, that has never seen the session.
    clock = FakeClock(START + 10 * MIN)
    sio = FakeSocketIO()
    store = RedisStore(clock, server_redis)
    await store.start()
    events = Events(sio, store, clock, code_grace_ms=MIN)  # type: ignore[arg-type]
    await sio.enter_room("tracker", f"trackers:{token}")
    await Alerts(events).run_once()
    assert sio.to("tracker", "checkInMissed") == [
        {"sessionToken": token, "timestamp": START + 2 * MIN}
    ]
    stored = await store.load(token)
    assert stored is not None and stored.pending_alert == START + 2 * MIN
    assert await server_redis.zcard(keys.DEADLINES) == 0
    assert await server_redis.zcard(keys.DEADLINE_LEASES) == 0
