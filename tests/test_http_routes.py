"""The HTTP side: the index, the status API and CORS on the Socket.IO endpoint."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.support.flows import check_in, eventually, pair, unknown_token


async def get(url: str, **kwargs) -> tuple[int, dict, object]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        if "json" in response.headers.get("Content-Type", ""):
            body = await response.json()
        else:
            body = await response.text()
        return response.status, dict(response.headers), body


async def test_the_index_describes_the_api(server):
    status, headers, body = await get(f"{server.url}/")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body == {
        "message": "All Is Well Backend API",
        "version": "1.0.0",
        "endpoints": {
            "websocket": "Socket.IO WebSocket connection",
            "api": "/api/status/:sessionToken",
        },
    }


async def test_status_of_an_unknown_session_is_404(server):
    status, _, body = await get(f"{server.url}/api/status/{unknown_token()}")

    assert status == 404
    assert body == {"error": "Invalid session token"}


@pytest.mark.node
async def test_status_of_a_fresh_session(server, node, transport):
    p = await pair(node, server.url, transport)

    status, _, body = await get(f"{server.url}/api/status/{p.token}")

    assert status == 200
    assert body == {
        "sessionToken": p.token,
        "lastCheckIn": None,
        "alertExpired": False,
        "settingsConfigured": False,
    }


@pytest.mark.node
async def test_status_reports_the_last_check_in_and_the_timer_settings(server, node, transport):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers", {"sessionToken": p.token, "reminderTimeMinutes": 10, "alertTimeMinutes": 20}
    )
    await p.tracked.expect("timersSet")
    last = await check_in(p.tracked, p.token)

    status, _, body = await get(f"{server.url}/api/status/{p.token}")

    assert status == 200
    assert body == {
        "sessionToken": p.token,
        "lastCheckIn": last,
        "alertExpired": False,
        "settingsConfigured": True,
    }


@pytest.mark.node
async def test_status_reports_alert_expired_once_the_alert_time_has_passed(server, node, transport):
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers",
        {"sessionToken": p.token, "reminderTimeMinutes": 0.002, "alertTimeMinutes": 0.005},
    )
    await p.tracked.expect("timersSet")
    await check_in(p.tracked, p.token)
    await asyncio.sleep(0.45)

    status, _, body = await get(f"{server.url}/api/status/{p.token}")

    assert status == 200
    assert body["alertExpired"] is True


@pytest.mark.node
async def test_status_is_served_from_redis_after_a_restart(start_server, redis_url, node):
    server = await start_server(redis_url=redis_url)
    p = await pair(node, server.url, "websocket")
    last = await check_in(p.tracked, p.token)
    redis = aioredis.from_url(redis_url)
    try:
        await eventually(
            lambda: redis.get(f"session:{p.token}"),
            lambda raw: raw is not None and json.loads(raw)["lastCheckIn"] == last,
        )
    finally:
        await redis.aclose()

    await server.restart()
    status, _, body = await get(f"{server.url}/api/status/{p.token}")

    assert status == 200
    assert body["lastCheckIn"] == last


async def test_the_socket_io_endpoint_allows_any_origin(server):
    status, headers, _ = await get(
        f"{server.url}/socket.io/?EIO=4&transport=polling",
        headers={"Origin": "https://localhost"},
    )

    assert status == 200
    assert headers.get("Access-Control-Allow-Origin") in ("*", "https://localhost")


async def test_the_socket_io_endpoint_answers_a_cors_preflight_for_post(server):
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            f"{server.url}/socket.io/?EIO=4&transport=polling",
            headers={
                "Origin": "http://example.com",
                "Access-Control-Request-Method": "POST",
            },
        ) as response,
    ):
        assert response.status in (200, 204)
        allowed_origin = response.headers.get("Access-Control-Allow-Origin")
        allowed_methods = response.headers.get("Access-Control-Allow-Methods", "")

    assert allowed_origin in ("*", "http://example.com")
    assert "POST" in allowed_methods.upper()
