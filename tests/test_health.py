"""/healthz: 200 while the server can serve, naming the state of Redis; it degrades, never fails,
while Redis is away (the server answers from memory meanwhile)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from server import __version__
from tests.support.flows import check_in, eventually, pair

# Recovery retries with a backoff capped at 5 s: allow one full step and some slack.
RECOVERY_WITHIN_S = 8.0


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
        return response.status, await response.json()


async def test_health_is_ok_with_redis_disabled_without_redis_url(server):
    assert await health(server.url) == (
        200,
        {"status": "ok", "redis": "disabled", "version": __version__},
    )


async def test_health_reports_redis_up_when_it_answers(start_server, redis_url):
    server = await start_server(redis_url=redis_url)

    assert await health(server.url) == (
        200,
        {"status": "ok", "redis": "up", "version": __version__},
    )


@pytest.mark.node
async def test_health_stays_ok_and_reports_redis_down_while_redis_is_killed(
    start_server, redis_server, node
):
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "polling")
    assert (await health(server.url))[1]["redis"] == "up"

    redis_server.kill()
    await check_in(p.tracked, p.token)  # confirmed from memory; the failed write marks Redis away

    status, body = await health(server.url)
    assert (status, body["status"], body["redis"]) == (200, "ok", "down")

    await asyncio.to_thread(redis_server.start)
    await eventually(
        lambda: health(server.url), lambda h: h[1]["redis"] == "up", within=RECOVERY_WITHIN_S
    )


async def test_the_server_starts_healthy_while_redis_is_down(start_server, redis_server):
    redis_server.stop()
    server = await start_server(redis_url=redis_server.url)

    assert await health(server.url) == (
        200,
        {"status": "ok", "redis": "down", "version": __version__},
    )

    await asyncio.to_thread(redis_server.start)
    await eventually(
        lambda: health(server.url), lambda h: h[1]["redis"] == "up", within=RECOVERY_WITHIN_S
    )
