"""The REST routes of the Node server, with the same JSON."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from . import errors
from .events import Events
from .limits import client_address
from .store import StoreUnavailable

EVENTS: Final = web.AppKey("events", Events)
TOKEN: Final = re.compile("[0-9a-f]{64}")

INDEX: Final = {
    "message": "All Is Well Backend API",
    "version": "1.0.0",
    "endpoints": {
        "websocket": "Socket.IO WebSocket connection",
        "api": "/api/status/:sessionToken",
    },
}


async def index(request: web.Request) -> web.Response:
    return web.json_response(INDEX)


async def status(request: web.Request) -> web.Response:
    events = request.app[EVENTS]
    token = request.match_info["token"]
    address = client_address(request.remote, request.headers, events.trust_proxy)
    # Guessing tokens here is limited like guessing codes over Socket.IO: a place taken before
    # the token is looked up, a failure unless it is right.
    attempt = events.limiter.ticket(address)
    if not await attempt.spend():
        return web.json_response({"error": errors.TOO_MANY_ATTEMPTS}, status=429)
    try:
        found = await events.status(token) if TOKEN.fullmatch(token) else None
        if found is not None:
            attempt.honest()
    except StoreUnavailable:
        attempt.honest()  # not a guess
        return web.json_response({"error": errors.STORAGE_UNAVAILABLE}, status=503)
    finally:
        await attempt.settle()
    if found is None:
        return web.json_response({"error": errors.INVALID_SESSION}, status=404)
    session, expired = found
    return web.json_response(
        {
            "sessionToken": token,
            "lastCheckIn": session.last_check_in,
            "alertExpired": expired,
            "settingsConfigured": session.settings_configured,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/api/status/{token}", status)
