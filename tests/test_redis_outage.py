"""Redis going away and coming back, with a real redis-server and the real Node client.

The server keeps serving from memory while Redis is dead (no check-in hangs, unlike the Node
server), writes every session changed meanwhile once Redis is back, starts even when Redis is
down, says so in its log once, and serves persisted sessions again after a restart.

The private redis-server keeps nothing on disk: after a SIGKILL its data is gone, so whatever
is in Redis after the recovery was written by the server after the recovery.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.flows import (
    SESSION_TTL_S,
    check_in,
    eventually,
    now_ms,
    only,
    pair,
    rejoin_as_tracker,
)
from tests.support.processes import RedisServer

pytestmark = pytest.mark.node

LOSS_LINE = "Redis unavailable"
# Recovery retries with a backoff capped at 5 s: allow one full step and some slack.
RECOVERY_WITHIN_S = 8.0
CONFIRM_WITHIN_S = 1.0


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """redis-py on the private redis-server; survives its restarts (connects per command)."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def record(client: aioredis.Redis, token: str) -> dict[str, Any] | None:
    """The stored session record, or None when it is absent or Redis does not answer."""
    try:
        raw = await client.get(f"session:{token}")
    except (RedisError, OSError):
        return None
    return None if raw is None else json.loads(raw)


async def record_once(
    client: aioredis.Redis, token: str, predicate: Any, within: float = RECOVERY_WITHIN_S
) -> dict[str, Any]:
    """Polls Redis until the record of ``token`` exists and satisfies ``predicate``."""
    try:
        found = await eventually(
            lambda: record(client, token),
            lambda r: r is not None and predicate(r),
            within=within,
        )
    except TimeoutError:
        raise AssertionError(
            f"after {within} s session:{token} in Redis is {await record(client, token)!r}"
        ) from None
    assert found is not None
    return found


async def set_timers(client: Any, token: str, reminder: float, alert: float) -> dict[str, Any]:
    client.emit(
        "setTimers",
        {"sessionToken": token, "reminderTimeMinutes": reminder, "alertTimeMinutes": alert},
    )
    return dict(only(await client.expect("timersSet")))


def loss_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if LOSS_LINE in line]


async def test_check_ins_are_confirmed_during_a_redis_outage_and_written_after_it(
    start_server, redis_server, redis_client, node, transport
):
    server = await start_server(redis_url=redis_server.url)
    first = await pair(node, server.url, transport)
    await set_timers(first.tracked, first.token, 60, 120)

    confirmed: list[int] = []
    latencies: list[float] = []
    second = None
    second_check_in = None
    kill_at, restart_at, rounds = 20, 44, 60  # ~50 ms apart: ~1 s up, ~1.2 s down, ~0.8 s up

    for i in range(rounds):
        if i == kill_at:
            redis_server.kill()
        if i == kill_at + 4:
            # A new pairing and a check-in while Redis is dead: only memory knows them.
            second = await pair(node, server.url, transport)
            second_check_in = await check_in(second.tracked, second.token)
        if i == restart_at:
            await asyncio.to_thread(redis_server.start)
        started = time.monotonic()
        first.tracked.emit("checkIn", first.token)
        payload = only(await first.tracked.expect("checkInConfirmed", timeout=3.0))
        latencies.append(time.monotonic() - started)
        confirmed.append(payload["timestamp"])
        await asyncio.sleep(max(0.0, 0.05 - latencies[-1]))

    slow = [(i, round(s, 3)) for i, s in enumerate(latencies) if s > CONFIRM_WITHIN_S]
    assert not slow, f"check-ins confirmed later than {CONFIRM_WITHIN_S} s: {slow}"
    assert first.tracked.received("error") == [], first.tracked.received("error")

    # The tracker heard every one of them, at once (Beyond: pushed, not polled).
    async def tracker_timestamps() -> list[int]:
        return [only(args)["timestamp"] for args in first.tracker.received("checkInReceived")]

    try:
        heard = await eventually(tracker_timestamps, lambda t: len(t) >= rounds, within=2.0)
    except TimeoutError:
        heard = await tracker_timestamps()
    assert sorted(heard) == sorted(confirmed), (len(heard), len(confirmed))

    # Redis lost everything with the SIGKILL: the server must write the held sessions again.
    last = max(confirmed)
    assert confirmed[-1] == last
    stored = await record_once(redis_client, first.token, lambda r: r["lastCheckIn"] == last)
    assert stored["reminderTimeMinutes"] == 60 and stored["alertTimeMinutes"] == 120, stored
    assert stored["settingsConfigured"] is True, stored
    ttl = await redis_client.ttl(f"session:{first.token}")
    assert SESSION_TTL_S - 60 <= ttl <= SESSION_TTL_S, ttl

    assert second is not None and second_check_in is not None
    stored_second = await record_once(
        redis_client, second.token, lambda r: r["lastCheckIn"] == second_check_in
    )
    assert stored_second["trackedSocketId"] == second.tracked.sid, stored_second
    assert stored_second["trackerSocketIds"] == [second.tracker.sid], stored_second
    ttl = await redis_client.ttl(f"session:{second.token}")
    assert SESSION_TTL_S - 60 <= ttl <= SESSION_TTL_S, ttl

    lines = loss_lines(server.log_text())
    assert len(lines) == 1, f"expected the loss of Redis logged once, got {len(lines)}: {lines}"
    assert server.running
    assert "Traceback" not in server.log_text()


async def test_the_server_starts_and_serves_while_redis_is_down(
    start_server, redis_server, redis_client, node, transport
):
    redis_server.stop()
    server = await start_server(redis_url=redis_server.url)

    p = await pair(node, server.url, transport)
    await set_timers(p.tracked, p.token, 30, 60)
    before = now_ms()
    confirmed = [await check_in(p.tracked, p.token) for _ in range(25)]
    assert confirmed == sorted(confirmed) and confirmed[0] >= before - 1000, confirmed
    p.tracker.emit("getStatus", {"sessionToken": p.token})
    status = only(await p.tracker.expect("statusUpdate"))
    assert status == {"sessionToken": p.token, "lastCheckIn": confirmed[-1], "alertExpired": False}
    assert p.tracked.received("error") == [] and p.tracker.received("error") == []

    await asyncio.to_thread(redis_server.start)
    stored = await record_once(redis_client, p.token, lambda r: r["lastCheckIn"] == confirmed[-1])
    assert stored["alertTimeMinutes"] == 60 and stored["settingsConfigured"] is True, stored
    ttl = await redis_client.ttl(f"session:{p.token}")
    assert SESSION_TTL_S - 60 <= ttl <= SESSION_TTL_S, ttl

    # Once back, new check-ins reach Redis again.
    later = await check_in(p.tracked, p.token)
    await record_once(redis_client, p.token, lambda r: r["lastCheckIn"] == later)

    lines = loss_lines(server.log_text())
    assert len(lines) == 1, f"expected the loss of Redis logged once, got {len(lines)}: {lines}"
    assert server.running
    assert "Traceback" not in server.log_text()


async def test_a_tracker_gets_the_last_check_in_after_a_server_restart(
    start_server, redis_server, redis_client, node, transport
):
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, transport)
    await set_timers(p.tracked, p.token, 30, 60)
    confirmed = [await check_in(p.tracked, p.token) for _ in range(3)]
    last = confirmed[-1]

    # "Save, then reply": once confirmed, the check-in is in Redis; restart at once.
    assert server.stop() == 0
    await server.start()
    stored = await record(redis_client, p.token)
    assert stored is not None and stored["lastCheckIn"] == last, stored

    tracker = await rejoin_as_tracker(node, server.url, transport, p.token, last)
    tracker.emit("getStatus", {"sessionToken": p.token})
    assert only(await tracker.expect("statusUpdate")) == {
        "sessionToken": p.token,
        "lastCheckIn": last,
        "alertExpired": False,
    }

    # The tracked person comes back too, and the restarted server pushes the next check-in.
    tracked = await node.connect(server.url, transport)
    tracked.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})
    assert only(await tracked.expect("sessionReconnected"))["role"] == "tracked"
    after = await check_in(tracked, p.token)
    assert after >= last
    assert only(await tracker.expect("checkInReceived")) == {
        "sessionToken": p.token,
        "timestamp": after,
    }
    assert "Traceback" not in server.log_text()
