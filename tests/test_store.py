"""The session store: memory, and Redis persistence over it (fakeredis and a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import fakeredis
import pytest
from redis import asyncio as aioredis

from server import keys, rules
from server.models import Session
from server.persistence import RedisStore, connect
from server.store import MemoryStore, StoreUnavailable, decode_record
from tests.support.processes import RedisServer

TOKEN = "ab" * 32
NOW = 1_800_000_000_000
NODE_RECORD = (
    b'{"trackedSocketId":"oldTracked","trackerSocketIds":["oldA","oldB"],'
    b'"lastCheckIn":1799999990000,"reminderTimeMinutes":30,"alertTimeMinutes":60,'
    b'"reminderTimeEnd":1800001790000,"alertTimeEnd":1800003590000,"settingsConfigured":true}'
)


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["fakeredis", "redis-server"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    if request.param == "fakeredis":
        client: aioredis.Redis = fakeredis.FakeAsyncRedis()
    else:
        client = connect(request.getfixturevalue("redis_url"), timeout=2, max_connections=4)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis: aioredis.Redis) -> AsyncIterator[RedisStore]:
    store = RedisStore(FakeClock(), redis)
    await store.start()
    yield store


def check_in(now: int) -> Callable[[Session], tuple[Session, None]]:
    return lambda session: (rules.check_in(session, now), None)


async def test_a_created_session_is_stored_as_node_json_for_30_days(
    store: RedisStore, redis: aioredis.Redis
) -> None:
    await store.create(TOKEN, Session(tracked_socket_id="t", tracker_socket_ids=("a",)))
    raw = await redis.get(keys.session(TOKEN))
    assert raw is not None
    assert raw.startswith(b'{"trackedSocketId":"t","trackerSocketIds":["a"],"lastCheckIn":null,')
    assert 2_591_990 < await redis.ttl(keys.session(TOKEN)) <= keys.SESSION_TTL_SECONDS


async def test_every_write_renews_the_expiry(store: RedisStore, redis: aioredis.Redis) -> None:
    await store.create(TOKEN, Session())
    await redis.expire(keys.session(TOKEN), 100)
    await store.update(TOKEN, check_in(NOW))
    assert await redis.ttl(keys.session(TOKEN)) > 2_591_990
    assert decode_record(await redis.get(keys.session(TOKEN))).last_check_in == NOW


async def test_a_node_record_loads_as_it_is_without_its_sockets(
    store: RedisStore, redis: aioredis.Redis
) -> None:
    await redis.set(keys.session(TOKEN), NODE_RECORD)
    session = await store.load(TOKEN)
    assert session == Session(
        last_check_in=1799999990000,
        reminder_time_minutes=30,
        alert_time_minutes=60,
        reminder_time_end=1800001790000,
        alert_time_end=1800003590000,
        settings_configured=True,
    )


async def test_the_node_server_can_read_what_we_write(
    store: RedisStore, redis: aioredis.Redis
) -> None:
    await redis.set(keys.session(TOKEN), NODE_RECORD)
    await store.update(TOKEN, check_in(NOW))
    import json

    written = json.loads(await redis.get(keys.session(TOKEN)))
    node_fields = json.loads(NODE_RECORD)
    assert set(node_fields) <= set(written)
    assert written["lastCheckIn"] == NOW and written["trackerSocketIds"] == []
    assert written["alertTimeEnd"] == NOW + 60 * 60_000


def test_values_the_node_server_stored_unchecked_still_load() -> None:
    raw = NODE_RECORD.replace(b'"reminderTimeMinutes":30', b'"reminderTimeMinutes":"30"')
    assert decode_record(raw).reminder_time_minutes == 30
    assert decode_record(b'{"lastCheckIn":1.5,"unknownField":{"x":1}}').last_check_in == 1.5


async def test_an_unreadable_record_is_no_session(store: RedisStore, redis: aioredis.Redis) -> None:
    await redis.set(keys.session(TOKEN), b"not json")
    assert await store.load(TOKEN) is None


async def test_an_unknown_token_is_no_session(store: RedisStore) -> None:
    assert await store.load(TOKEN) is None
    assert await store.update(TOKEN, check_in(NOW)) is None


async def test_concurrent_changes_to_one_session_are_all_kept(
    store: RedisStore, redis: aioredis.Redis
) -> None:
    await redis.set(keys.session(TOKEN), NODE_RECORD)
    sids = [f"{store.instances.id}.sid{i}" for i in range(50)]
    joins = [
        store.update(TOKEN, lambda s, sid=sid: (rules.with_tracker(s, sid), None)) for sid in sids
    ]
    await asyncio.gather(*joins)
    stored = decode_record(await redis.get(keys.session(TOKEN)))
    assert sorted(stored.tracker_socket_ids) == sorted(sids)


async def test_memory_only_keeps_sessions_for_30_days_after_a_write() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    await store.create(TOKEN, Session())
    clock.now += keys.SESSION_TTL_SECONDS * 1000
    assert store.sweep() == 0
    clock.now += 1
    assert store.sweep() == 1
    assert await store.load(TOKEN) is None


async def test_idle_sessions_without_sockets_leave_memory_but_not_redis(
    store: RedisStore,
) -> None:
    clock: FakeClock = store._clock  # type: ignore[assignment]
    await store.create(TOKEN, Session(last_check_in=NOW))
    connected = f"{store.instances.id}.connected"
    await store.create("cd" * 32, Session(tracker_socket_ids=(connected,)))
    clock.now += 11 * 60_000
    assert store.sweep() == 1
    assert store.cached(TOKEN) is None and store.cached("cd" * 32) is not None
    assert (await store.load(TOKEN)) == Session(last_check_in=NOW, revision=1)  # written once


async def test_writes_during_an_outage_are_held_and_written_on_recovery(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(FakeClock(), connect(redis_server.url, timeout=0.5, max_connections=4))
    await store.start()
    await store.create(TOKEN, Session())
    redis_server.kill()
    for i in range(20):
        await asyncio.wait_for(store.update(TOKEN, check_in(NOW + i)), timeout=2)
    await store.create("cd" * 32, Session(last_check_in=1))
    assert not store.available and store.held == 2
    with pytest.raises(StoreUnavailable):
        await store.load("ef" * 32)  # not in memory, and Redis cannot say
    redis_server.start()
    async with asyncio.timeout(15):
        while not store.available:
            await asyncio.sleep(0.05)
    assert store.held == 0
    check = aioredis.Redis.from_url(redis_server.url)
    assert decode_record(await check.get(keys.session(TOKEN))).last_check_in == NOW + 19
    assert decode_record(await check.get(keys.session("cd" * 32))).last_check_in == 1
    await check.aclose()
    await store.close()


async def test_a_store_started_without_redis_serves_from_memory_and_catches_up(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    store = RedisStore(FakeClock(), connect(redis_server.url, timeout=0.5, max_connections=4))
    await store.start()
    assert not store.available
    await store.create(TOKEN, Session(last_check_in=7))
    assert (await store.load(TOKEN)) == Session(last_check_in=7)
    redis_server.start()
    async with asyncio.timeout(15):
        while not store.available:
            await asyncio.sleep(0.05)
    check = aioredis.Redis.from_url(redis_server.url)
    assert decode_record(await check.get(keys.session(TOKEN))).last_check_in == 7
    await check.aclose()
    await store.close()


async def test_new_redis_connections_do_not_read_the_package_metadata_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py 7+ read its version from the installed metadata for every new connection
    (4% of the CPU of pairing while the pool grew) unless given a DriverInfo made once."""
    client = connect(redis_url, timeout=2, max_connections=8)
    read: list[str] = []
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: read.append(name) or real(name))
    try:
        await asyncio.gather(*(client.ping() for _ in range(8)))  # eight connections at once
        assert len(client.connection_pool._available_connections) == 8
    finally:
        await client.aclose()
    assert read == []


async def test_a_writer_cancelled_during_a_commit_round_cancels_nobody_else(
    store: RedisStore, redis: aioredis.Redis
) -> None:
    """The writers of one round of the group commit share it: cancelling one (a client gone,
    a shutdown) neither cancels the round for the others nor loses its own change, which is
    in the round; the cancelled one learns of it when the round ends."""
    await redis.set(keys.session(TOKEN), NODE_RECORD)
    await store.load(TOKEN)
    sids = [f"{store.instances.id}.sid{i}" for i in range(5)]
    writers = [
        asyncio.create_task(
            store.update(TOKEN, lambda s, sid=sid: (rules.with_tracker(s, sid), None))
        )
        for sid in sids
    ]
    await asyncio.sleep(0)  # every change made in memory, the round under way
    writers[2].cancel()
    results = await asyncio.gather(*writers, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(not isinstance(result, BaseException) for i, result in enumerate(results) if i != 2)
    stored = decode_record(await redis.get(keys.session(TOKEN)))
    assert sorted(stored.tracker_socket_ids) == sorted(sids)
