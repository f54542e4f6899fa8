"""Redis restarted empty (no persistence, or flushed) while sessions are armed: the server sees
its data marker gone at the next heartbeat and writes back every session and deadline it holds,
so that alerts still fire and the sessions outlive the next server restart.

Without the write-back nothing notices: redis-py reconnects to the empty Redis silently, no
alert fires (its deadline is gone), and a session nobody touches is lost at the next restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.flows import check_in, eventually, only, pair, rejoin_as_tracker
from tests.support.metrics import scrape, value
from tests.support.processes import RedisServer

pytestmark = pytest.mark.node

SESSIONS = 4
WRITTEN_BACK_WITHIN_S = 3.0


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def stored(client: aioredis.Redis, tokens: list[str]) -> tuple[int, int]:
    """How many of the sessions' records, and of their deadlines, Redis holds."""
    try:
        records = sum([await client.exists(f"session:{token}") for token in tokens])
        deadlines = await client.zcard("deadlines") + await client.zcard("deadlines:leased")
    except (RedisError, OSError):
        return -1, -1
    return records, deadlines


async def test_sessions_and_deadlines_come_back_when_redis_restarts_empty(
    start_server, redis_server, redis_client, node
):
    server = await start_server(redis_url=redis_server.url)
    pairs = [await pair(node, server.url, "websocket") for _ in range(SESSIONS)]
    last: dict[str, int] = {}
    for p in pairs:
        last[p.token] = await check_in(p.tracked, p.token)
        # A reminder after 3 s, the alert after 6 s: due after Redis is back.
        p.tracked.emit(
            "setTimers",
            {"sessionToken": p.token, "reminderTimeMinutes": 0.05, "alertTimeMinutes": 0.1},
        )
        only(await p.tracked.expect("timersSet"))
    tokens = [p.token for p in pairs]
    assert await stored(redis_client, tokens) == (SESSIONS, 2 * SESSIONS)

    redis_server.kill()  # no persistence: everything it held is gone
    await asyncio.to_thread(redis_server.start)

    # Written back within a few seconds, although no client did anything meanwhile.
    back = await eventually(
        lambda: stored(redis_client, tokens),
        lambda counts: counts[0] == SESSIONS and counts[1] >= SESSIONS,
        within=WRITTEN_BACK_WITHIN_S,
    )
    assert back[0] == SESSIONS, back
    record = json.loads(await redis_client.get(f"session:{tokens[0]}"))
    assert record["lastCheckIn"] == last[tokens[0]] and record["alertTimeMinutes"] == 0.1
    assert await redis_client.ttl(f"session:{tokens[0]}") > 29 * 24 * 3600
    assert "Redis lost its data: wrote back" in server.log_text()
    assert value(await scrape(server.url), "alliswell_redis_data_lost_total") == 1

    # Every connected tracker hears its missed check-in: the deadlines came back too.
    for p in pairs:
        missed = only(await p.tracker.expect("checkInMissed", timeout=15.0))
        assert missed["sessionToken"] == p.token

    # The sessions outlive a restart of the server (Redis holds them again).
    await asyncio.to_thread(server.stop)
    await server.start()
    for p in pairs:
        await rejoin_as_tracker(node, server.url, "websocket", p.token, last[p.token])
