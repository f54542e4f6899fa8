"""Two instances changing one session at once never lose an update (issue #3).

Each instance caches records in memory; the stores here are two such instances on one real
redis-server. The deterministic interleavings are also run against a naive read-modify-write
store (the same store writing without its compare-and-set): they must fail on it, which shows
that they test what they claim to.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from redis import asyncio as aioredis

from server import keys, rules
from server.codes import Codes
from server.instances import Instances
from server.models import PendingCode, Session
from server.persistence import RedisStore
from server.store import decode_record
from tests.support.fakes import FakeClock, beat_alone

NOW = 1_800_000_000_000


class NaiveStore(RedisStore):
    """Read, change, write whatever it holds: what a plain cache in front of Redis does."""

    async def _write(self, tokens: Any) -> set[str]:
        self._forced.update(tokens)
        return await super()._write(tokens)


StoreClass = type[RedisStore]
NAIVE = pytest.param(
    NaiveStore, marks=pytest.mark.xfail(strict=True, reason="a naive read-modify-write loses it")
)


ALIVE_MS = 1_000  # short: an instance dies in real time (heartbeats are on Redis's clock)


async def one_session_on_two_instances(
    server_redis: aioredis.Redis,
    store_class: StoreClass,
    session: Callable[[RedisStore], Session] = lambda a: Session(),
) -> tuple[RedisStore, RedisStore, str]:
    """Two stores that see each other alive (each sees the other's sockets as connected), and a
    session created on A that B holds too (soon out of date)."""
    clock = FakeClock()
    a = store_class(clock, server_redis, Instances(clock, server_redis, alive_ms=ALIVE_MS))
    b = store_class(clock, server_redis, Instances(clock, server_redis, alive_ms=ALIVE_MS))
    for store in (a, b, a):
        await store.instances.beat()
        await store.start()
    assert a.instances.others and b.instances.others
    token = secrets.token_hex(32)
    await a.create(token, session(a))
    assert await b.load(token) is not None
    return a, b, token


def sid(store: RedisStore, name: str) -> str:
    return f"{store.instances.id}.{name}"


def joining(socket: str) -> Callable[[Session], tuple[Session, None]]:
    return lambda session: (rules.with_tracker(session, socket), None)


async def stored(server_redis: aioredis.Redis, token: str) -> Session:
    raw = await server_redis.get(keys.session(token))
    assert raw is not None
    return decode_record(raw)


@pytest.mark.parametrize("store_class", [RedisStore, NAIVE])
async def test_two_trackers_joining_on_two_instances_are_both_kept(
    server_redis: aioredis.Redis, store_class: StoreClass
) -> None:
    a, b, token = await one_session_on_two_instances(
        server_redis, store_class, lambda a: Session(tracked_socket_id=sid(a, "tracked"))
    )
    await a.update(token, joining(sid(a, "one")))
    result = await b.update(token, joining(sid(b, "two")))
    assert result is not None
    expected = {sid(a, "one"), sid(b, "two")}
    assert set((await stored(server_redis, token)).tracker_socket_ids) == expected
    assert set(result[0].tracker_socket_ids) == expected  # what B answered with


@pytest.mark.parametrize("store_class", [RedisStore, NAIVE])
async def test_a_check_in_racing_set_timers_on_another_instance_keeps_both(
    server_redis: aioredis.Redis, store_class: StoreClass
) -> None:
    a, b, token = await one_session_on_two_instances(server_redis, store_class)
    await asyncio.gather(
        a.update(token, lambda s: (rules.check_in(s, NOW), None)),
        b.update(token, lambda s: (rules.set_timers(s, 30, 60, NOW - 5), None)),
    )
    record = await stored(server_redis, token)
    assert record.last_check_in == NOW
    assert (record.reminder_time_minutes, record.alert_time_minutes) == (30, 60)
    # Both instances answer from the newest record from now on.
    for store in (a, b):
        status = await store.update(token, lambda s: (s, s))
        assert status is not None and status[0] == record


@pytest.mark.parametrize("store_class", [RedisStore, NAIVE])
async def test_a_read_on_a_stale_instance_sees_the_newer_record(
    server_redis: aioredis.Redis, store_class: StoreClass
) -> None:
    a, b, token = await one_session_on_two_instances(server_redis, store_class)
    await a.update(token, lambda s: (rules.check_in(s, NOW), None))
    seen = await b.update(token, lambda s: (s, s.last_check_in))  # getStatus changes nothing
    assert seen is not None and seen[1] == NOW


async def test_many_concurrent_changes_from_two_instances_are_all_kept(
    server_redis: aioredis.Redis,
) -> None:
    a, b, token = await one_session_on_two_instances(server_redis, RedisStore)
    joins = [
        store.update(token, joining(sid(store, f"t{i}"))) for i in range(40) for store in (a, b)
    ]
    check_ins = [
        store.update(token, lambda s, at=NOW + i: (rules.check_in(s, at), None))
        for i, store in enumerate((a, b) * 10)
    ]
    changes = joins + check_ins
    order = list(range(len(changes)))
    random.Random(7).shuffle(order)
    await asyncio.gather(*(changes[i] for i in order))
    record = await stored(server_redis, token)
    expected = {sid(store, f"t{i}") for i in range(40) for store in (a, b)}
    assert set(record.tracker_socket_ids) == expected
    assert len(record.tracker_socket_ids) == len(expected)
    assert record.last_check_in is not None and NOW <= record.last_check_in < NOW + 20
    assert a.conflicts + b.conflicts > 0  # the race really happened


async def test_sockets_of_a_dead_instance_stop_counting(server_redis: aioredis.Redis) -> None:
    _, b, token = await one_session_on_two_instances(
        server_redis,
        RedisStore,
        lambda a: Session(tracked_socket_id=sid(a, "t"), tracker_socket_ids=(sid(a, "x"),)),
    )
    assert await b.load(token) == await stored(server_redis, token)
    await beat_alone(b.instances, b.instances._clock)  # type: ignore[arg-type]  # A is silent
    assert not b.instances.others
    result = await b.update(token, joining(sid(b, "y")))
    assert result is not None
    assert result[0].tracked_socket_id is None and result[0].tracker_socket_ids == (sid(b, "y"),)


async def test_one_code_registered_on_two_instances_at_once_has_one_owner(
    server_redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    readers = Instances(clock, server_redis), Instances(clock, server_redis)
    first, second = (
        Codes(clock, instances, 300_000, server_redis, lambda: True) for instances in readers
    )
    code = str(secrets.randbelow(900_000) + 100_000)
    seen = [await first.get(code), await second.get(code)]
    assert seen[0].entry is None and seen[1].entry is None
    entries = [PendingCode(code=code, tracked_sid=f"{n}.s", expires_at=NOW + 1) for n in "ab"]
    won = [await first.put(entries[0], seen[0]), await second.put(entries[1], seen[1])]
    assert won[0] is not None and won[1] is None
    assert (await second.get(code)).raw == won[0].raw  # the first one's entry
    # Its owner is on an instance the second one has not heard of: not dead for that...
    assert (await second.get(code)).entry == entries[0]
    # ...until a heartbeat read finds no heartbeat of it: it has left.
    await readers[1].beat()
    assert (await second.get(code)).entry == PendingCode(
        code=code, tracked_sid=None, expires_at=NOW + 1, left_at=0
    )
