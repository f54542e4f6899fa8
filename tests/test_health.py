"""/healthz: 200 while the server can serve, naming the state of Redis as the heartbeat (every
second, with or without clients) sees it; it degrades, never fails, while Redis is away after it
once answered (the server answers from memory meanwhile). A configured Redis never reached is a
broken deployment: 503, and a log line that says where and why."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from typing import Any

import aiohttp
import pytest

from server import __version__
from tests.support.flows import check_in, eventually, pair
from tests.support.metrics import scrape, value

# Recovery retries with a backoff capped at 5 s: allow one full step and some slack.
RECOVERY_WITHIN_S = 8.0
# A heartbeat every second, failed after 1 s without an answer: ~2 s, and slack for a busy host.
BEAT_SEEN_WITHIN_S = 4.0
ALIVE_S = 5.0  # an instance without a heartbeat for this long is dead (server/instances.py)


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


async def test_health_fails_until_a_configured_redis_first_answers(start_server, redis_server):
    redis_server.stop()
    server = await start_server(redis_url=redis_server.url)

    assert await health(server.url) == (
        503,
        {"status": "unavailable", "redis": "down", "version": __version__},
    )
    assert (
        f"Redis unavailable at 127.0.0.1:{redis_server.port}/0, never reached since the start "
        "(connection refused)"
    ) in server.log_text()

    await asyncio.to_thread(redis_server.start)
    await eventually(
        lambda: health(server.url),
        lambda h: h == (200, {"status": "ok", "redis": "up", "version": __version__}),
        within=BEAT_SEEN_WITHIN_S,  # the heartbeat sees it answer and wakes the recovery
    )


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("password", "authentication failed: wrong user or password in REDIS_URL"),
        ("database", "DB index out of range"),
    ],
)
async def test_a_misconfigured_redis_url_is_named_in_the_log_and_fails_health(
    start_server, redis_server, fault, cause
):
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    if fault == "password":
        assert redis_server.command("CONFIG", "SET", "requirepass", "s3cret") == "+OK"
        url = f"redis://:not-s3cret@127.0.0.1:{redis_server.port}/0"
    server = await start_server(redis_url=url)

    status, body = await health(server.url)
    assert (status, body["status"], body["redis"]) == (503, "unavailable", "down")
    where = f"127.0.0.1:{redis_server.port}/{99 if fault == 'database' else 0}"
    lines = [line for line in server.log_text().splitlines() if "never reached" in line]
    assert len(lines) == 1 and where in lines[0] and cause in lines[0], lines
    assert "not-s3cret" not in server.log_text()


async def test_health_says_down_within_seconds_of_redis_stopping_with_no_client_active(
    start_server, redis_server
):
    server = await start_server(redis_url=redis_server.url)
    assert (await health(server.url))[1]["redis"] == "up"
    assert value(await scrape(server.url), "alliswell_instances_alive") == 1

    redis_server.stop()
    status, body = await eventually(
        lambda: health(server.url), lambda h: h[1]["redis"] == "down", within=BEAT_SEEN_WITHIN_S
    )
    assert (status, body["status"]) == (200, "ok")  # it degrades: it once reached Redis
    # Who is alive is unknown now, and /metrics says so instead of its last count.
    await eventually(
        lambda: scrape(server.url),
        lambda s: math.isnan(value(s, "alliswell_instances_alive")),
        within=ALIVE_S + BEAT_SEEN_WITHIN_S,
    )

    await asyncio.to_thread(redis_server.start)
    await eventually(
        lambda: health(server.url), lambda h: h[1]["redis"] == "up", within=BEAT_SEEN_WITHIN_S
    )
    await eventually(
        lambda: scrape(server.url),
        lambda s: value(s, "alliswell_instances_alive") == 1,
        within=BEAT_SEEN_WITHIN_S,
    )


async def test_health_says_down_while_redis_is_frozen(start_server, redis_server):
    server = await start_server(redis_url=redis_server.url)
    assert (await health(server.url))[1]["redis"] == "up"
    assert redis_server.process is not None

    os.kill(redis_server.process.pid, signal.SIGSTOP)  # answers nothing, refuses nothing
    try:
        await eventually(
            lambda: health(server.url),
            lambda h: h[1]["redis"] == "down",
            within=BEAT_SEEN_WITHIN_S,
        )
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    await eventually(
        lambda: health(server.url), lambda h: h[1]["redis"] == "up", within=RECOVERY_WITHIN_S
    )
