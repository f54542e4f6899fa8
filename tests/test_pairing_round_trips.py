"""A pairing asks Redis once per event: registerCode and trackCode each in one script call,
writing exactly what the steps wrote; when Redis holds something else than expected, the event
is decided on what it holds, and the limits still count first."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis import asyncio as aioredis

from server import errors, keys
from server.codes import Codes
from server.crashes import Bindings
from server.events import Events
from server.instances import Instances
from server.limits import AttemptLimiter, RateLimiter
from server.pairscripts import PairingScripts
from server.persistence import RedisStore
from tests.support.fakes import FakeClock, FakeSocketIO
from tests.test_codes import RoundTrips

CODE = "123456"
ADDRESS = "192.0.2.7"


async def events_on(
    redis: aioredis.Redis, *, scripts: bool = True, attempts: int = 10
) -> tuple[Events, FakeSocketIO]:
    """An instance's handlers on `redis`, as app.build_shared makes them (one call per event
    with `scripts`, else step by step)."""
    clock = FakeClock()
    instances = Instances(clock, redis)
    await instances.beat()
    store = RedisStore(clock, redis, instances)
    await store.start()
    sio = FakeSocketIO()
    events = Events(
        sio,  # type: ignore[arg-type]
        store,
        clock,
        code_grace_ms=300_000,
        limiter=AttemptLimiter(clock, attempts, redis, lambda: True),
        registrations=RateLimiter(clock, 30, redis, lambda: True),
        instances=instances,
        codes=Codes(clock, instances, 300_000, redis, lambda: True, records=store.records),
        bindings=Bindings(redis),
        scripts=PairingScripts(redis) if scripts else None,
    )
    return events, sio


def sids(events: Events, n: str = "") -> tuple[str, str]:
    app, phone = f"{events.instances.id}.app{n}", f"{events.instances.id}.phone{n}"
    for sid in (app, phone):
        events.addresses[sid] = ADDRESS
    return app, phone


def timers_of(token: str) -> dict[str, Any]:
    return {"sessionToken": token, "reminderTimeMinutes": 60, "alertTimeMinutes": 120}


async def pair(events: Events, sio: FakeSocketIO, code: str = CODE) -> str:
    app, phone = sids(events, code)
    await events.register_code(app, (code,))
    assert sio.to(app, "codeRegistered")[-1]["code"] == code
    await events.track_code(phone, (code,))
    token: str = sio.to(phone, "trackingStarted")[-1]["sessionToken"]
    assert sio.to(app, "trackerConnected") == [{"sessionToken": token}]
    await events.set_timers(app, (timers_of(token),))
    assert sio.to(app, "timersSet")
    return token


async def stored(redis: aioredis.Redis, events: Events, token: str) -> dict[str, Any]:
    """Every key Redis holds but the heartbeat's, with the values that differ by run (the
    token, the instance, times) made the same."""
    found: dict[str, Any] = {}
    async for raw in redis.scan_iter():
        key = raw.decode()
        if key in (keys.INSTANCES, keys.DATA_MARKER):
            continue
        kind = (await redis.type(key)).decode()
        value: Any
        if kind == "string":
            value = (await redis.get(key)).decode()
        elif kind == "hash":
            value = {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}
        elif kind == "set":
            value = sorted(m.decode() for m in await redis.smembers(key))
        else:
            value = [m.decode() for m in await redis.zrange(key, 0, -1)]
        ttl = await redis.ttl(key)
        found[key] = (value, ttl > 0)
    text = repr(sorted(found.items()))
    text = text.replace(token, "<token>").replace(events.instances.id, "<instance>")
    return {"keys": re.sub(r"\d{10,}", "<time>", text)}


async def test_register_and_track_each_cost_one_round_trip(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, sio = await events_on(server_redis)
    await pair(events, sio, "654321")  # Redis learns the scripts (SCRIPT LOAD) once
    app, phone = sids(events, "2")
    trips = RoundTrips(server_redis, monkeypatch)

    await events.register_code(app, (CODE,))
    assert trips.count == 1
    await events.track_code(phone, (CODE,))
    assert trips.count == 2
    token = sio.to(phone, "trackingStarted")[-1]["sessionToken"]
    await events.set_timers(app, (timers_of(token),))
    assert trips.count == 3  # the record's write: the group commit

    assert sio.to(app, "trackerConnected") == [{"sessionToken": token}]
    assert (await events.store.current(token)) is not None


async def test_one_call_writes_what_the_steps_wrote(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    stepwise, sio = await events_on(server_redis, scripts=False)
    trips = RoundTrips(server_redis, monkeypatch)
    token = await pair(stepwise, sio)
    assert trips.count > 2  # the steps
    by_steps = await stored(server_redis, stepwise, token)
    await server_redis.flushdb()

    at_once, sio = await events_on(server_redis)
    at_once.instances.id = stepwise.instances.id  # the same names of sockets and sets
    token = await pair(at_once, sio)

    assert await stored(server_redis, at_once, token) == by_steps
    window = at_once.limiter.window()
    assert await server_redis.hgetall(keys.attempts(ADDRESS, window)) == {b"inflight": b"0"}


async def test_a_code_changed_elsewhere_is_decided_on_what_redis_holds(
    server_redis: aioredis.Redis,
) -> None:
    events, sio = await events_on(server_redis)
    app, phone = sids(events)
    await events.register_code(app, (CODE,))
    # Another instance deleted it meanwhile (its app registered it... and gave it up).
    await server_redis.delete(keys.code(CODE))

    await events.track_code(phone, (CODE,))

    assert sio.to(phone) == [errors.INVALID_OR_EXPIRED_CODE]
    assert await server_redis.get(keys.code(CODE)) is None
    assert [k async for k in server_redis.scan_iter("session:*")] == []
    # A failed attempt, counted.
    attempts = await server_redis.hgetall(keys.attempts(ADDRESS, events.limiter.window()))
    assert attempts == {b"failed": b"1", b"inflight": b"0"}


async def test_the_attempt_limit_counts_before_the_code_is_looked_at(
    server_redis: aioredis.Redis,
) -> None:
    events, sio = await events_on(server_redis, attempts=1)
    app, phone = sids(events)
    await events.register_code(app, (CODE,))
    await server_redis.hset(keys.attempts(ADDRESS, events.limiter.window()), "failed", 1)

    await events.track_code(phone, (CODE,))

    assert sio.to(phone) == [errors.TOO_MANY_ATTEMPTS]
    entry = await server_redis.get(keys.code(CODE))
    assert entry is not None and b'"session_token":null' in entry  # not paired


async def test_registrations_over_the_limit_register_nothing(
    server_redis: aioredis.Redis,
) -> None:
    events, sio = await events_on(server_redis)
    app, _ = sids(events)
    window = events.limiter.window()
    await server_redis.set(keys.registrations(ADDRESS, window), 30)

    await events.register_code(app, (CODE,))

    assert sio.to(app) == [errors.TOO_MANY_ATTEMPTS]
    assert await server_redis.get(keys.code(CODE)) is None
    assert await server_redis.get(keys.registrations(ADDRESS, window)) == b"31"
