"""Background work is supervised: a crash is logged with its traceback, counted in /metrics, and
the work restarted with a backoff; a write that fails with a bug still answers its writers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from msgspec.structs import replace
from redis import asyncio as aioredis

from server import tasks
from server.app import STORE, create_app
from server.instances import Instances
from server.models import Session
from server.ops import METRICS
from server.persistence import RedisStore
from server.settings import Settings
from tests.support.fakes import FakeClock
from tests.support.flows import eventually
from tests.support.metrics import parse, value


async def test_a_crashed_task_is_logged_counted_and_restarted_with_a_growing_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []
    crashes: list[str] = []

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) <= 3:
            raise RuntimeError(f"injected failure {len(runs)}")
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, logger="server.tasks"):
        task = tasks.supervise("flaky", flaky, crashes.append, first_delay=0.05, max_delay=0.1)
        try:
            await eventually(lambda: _value(len(runs)), lambda n: n == 4)
        finally:
            await tasks.stop(task)
    assert crashes == ["flaky"] * 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1  # doubled, then capped
    tracebacks = [r for r in caplog.records if r.exc_info and "flaky" in r.getMessage()]
    assert [str(r.exc_info[1]) for r in tracebacks if r.exc_info] == [
        f"injected failure {n}" for n in (1, 2, 3)
    ]


async def test_a_task_stopped_at_shutdown_is_no_crash() -> None:
    crashes: list[str] = []

    async def swallows_its_cancellation() -> None:  # as python-socketio's listener does
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return

    task = tasks.supervise("listener", swallows_its_cancellation, crashes.append)
    await asyncio.sleep(0.01)
    await tasks.stop(task)
    assert task.cancelled() and crashes == []


async def test_a_crashed_heartbeat_restarts_and_is_counted_in_metrics(
    redis_url: str,
    server_redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = Instances.run_forever
    calls = 0

    async def crashes_once(self: Instances) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected heartbeat bug")
        await real(self)

    monkeypatch.setattr(Instances, "run_forever", crashes_once)
    app = create_app(Settings(redis_url=redis_url))
    server = TestServer(app)
    with caplog.at_level(logging.ERROR, logger="server.tasks"):
        await server.start_server()
        try:
            await eventually(lambda: _value(calls), lambda n: n >= 2)
            samples = parse((await app[METRICS].render()).decode())
            assert value(samples, "alliswell_task_crashes_total", task="instance-heartbeat") == 1
            # Beating again: the other instances keep counting this one alive.
            store = app[STORE]
            assert isinstance(store, RedisStore)
            me = store.instances.id
            first = await server_redis.zscore("instances", me)
            await eventually(
                lambda: server_redis.zscore("instances", me),
                lambda score: score is not None and first is not None and score > first,
                within=3.0,
            )
        finally:
            await server.close()
    crashed = [r for r in caplog.records if "instance-heartbeat crashed" in r.getMessage()]
    assert len(crashed) == 1 and crashed[0].exc_info is not None
    assert "injected heartbeat bug" in str(crashed[0].exc_info[1])


async def test_a_bug_in_the_group_commit_still_answers_its_writers(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(FakeClock(), server_redis)
    await store.start()
    crashes: list[str] = []
    store.on_crash = crashes.append
    token = secrets.token_hex(32)
    await store.create(token, Session())
    real = store._write
    broken = True

    async def buggy(tokens: Any) -> set[str]:
        if broken:
            raise RuntimeError("injected commit bug")
        return await real(tokens)

    monkeypatch.setattr(store, "_write", buggy)
    try:
        # Answered (held, as in an outage) instead of waiting forever on a commit that fails.
        async with asyncio.timeout(2.0):
            updated = await store.update(token, lambda s: (replace(s, last_check_in=5), None))
        assert updated is not None and crashes and crashes[0] == "redis-commit"
        assert store.held == 1
        broken = False  # the recovery writes it once the write works again
        await eventually(
            lambda: server_redis.get(f"session:{token}"),
            lambda raw: raw is not None and b'"lastCheckIn":5' in raw,
            within=8.0,
        )
    finally:
        await store.close()


async def _value(x: Any) -> Any:
    return x
