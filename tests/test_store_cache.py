"""What a session costs in memory over time: the cache of Redis records, and the deadline heap
of memory-only mode. Clock injected; fakeredis and a real redis-server."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis import asyncio as aioredis

from server import rules
from server.models import Session
from server.persistence import RedisStore, connect
from server.store import IDLE_EVICT_MS, MemoryStore
from tests.support.fakes import FakeClock

TOKEN = "ab" * 32
MINUTE_MS = 60_000
WEEK_MS = 7 * 24 * 60 * MINUTE_MS


@pytest.fixture(params=["fakeredis", "redis-server"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    if request.param == "fakeredis":
        client: aioredis.Redis = fakeredis.FakeAsyncRedis()
    else:
        client = connect(request.getfixturevalue("redis_url"), timeout=2, max_connections=4)
    yield client
    await client.aclose()


async def started(clock: FakeClock, redis: aioredis.Redis) -> RedisStore:
    store = RedisStore(clock, redis)
    await store.start()
    return store


async def test_a_session_this_instance_only_reads_leaves_memory_once_idle(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    writer, reader = await started(clock, redis), await started(clock, redis)
    await writer.create(TOKEN, Session(last_check_in=clock.now))
    # getStatus (nothing to change), the REST route, a reminder claimed here: reads only.
    assert await reader.update(TOKEN, functools.partial(rules.observe_status, now=clock.now))
    assert await reader.current(TOKEN) is not None
    assert reader.cached(TOKEN) is not None

    clock.now += IDLE_EVICT_MS + 1
    assert reader.sweep() == 1
    assert reader.cached(TOKEN) is None and len(reader) == 0
    assert await reader.load(TOKEN) == Session(
        last_check_in=clock.now - IDLE_EVICT_MS - 1, revision=1
    )


async def test_a_session_read_lately_stays_in_memory_however_old_its_last_write(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    store = await started(clock, redis)
    await store.create(TOKEN, Session())
    clock.now += IDLE_EVICT_MS - MINUTE_MS
    assert await store.current(TOKEN) == Session(revision=1)  # read, not changed (written once)
    clock.now += 2 * MINUTE_MS  # written more than the idle time ago, read less
    assert store.sweep() == 0
    assert store.cached(TOKEN) is not None
    clock.now += IDLE_EVICT_MS
    assert store.sweep() == 1


async def test_a_session_with_a_socket_here_stays_in_memory_however_idle(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    store = await started(clock, redis)
    await store.create(TOKEN, Session(tracked_socket_id=f"{store.instances.id}.app"))
    clock.now += 10 * IDLE_EVICT_MS
    assert store.sweep() == 0
    assert store.cached(TOKEN) is not None


async def test_memory_only_deadlines_stay_two_entries_after_a_week_of_check_ins() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    await store.create(TOKEN, Session())
    await store.update(TOKEN, lambda s: (rules.set_timers(s, 30, 60, clock.now), None))
    check_ins = 0
    end = clock.now + WEEK_MS
    while clock.now < end:
        clock.now += 7 * MINUTE_MS + 38_000  # 1,320 check-ins in a week
        await store.update(TOKEN, lambda s: (rules.check_in(s, clock.now), None))
        check_ins += 1
    assert check_ins >= 1_320
    deadlines = store.deadlines
    assert len(deadlines) == 2
    assert deadlines.queued <= 2 * len(deadlines)  # type: ignore[union-attr]

    # Only the live deadlines fire, each when due.
    last = clock.now
    assert await deadlines.claim(last + 30 * MINUTE_MS - 1, 10) == []
    assert await deadlines.claim(last + 60 * MINUTE_MS, 10) == [
        (rules.REMINDER, TOKEN, last + 30 * MINUTE_MS),
        (rules.ALERT, TOKEN, last + 60 * MINUTE_MS),
    ]
    assert deadlines.queued == 0  # type: ignore[union-attr]
