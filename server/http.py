"""The REST routes of the Node server, with the same JSON."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from . import errors
from .events import Events
from .store import StoreUnavailable

EVENTS: Final = web.AppKey("events", Events)
TOKEN_PATTERN: Final = "[0-9a-f]{64}"

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
    token = request.match_info["token"]
    try:
        found = await request.app[EVENTS].status(token)
    except StoreUnavailable:
        return web.json_response({"error": errors.STORAGE_UNAVAILABLE}, status=503)
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


async def unknown_token(request: web.Request) -> web.Response:
    return web.json_response({"error": errors.INVALID_SESSION}, status=404)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get(f"/api/status/{{token:{TOKEN_PATTERN}}}", status)
    app.router.add_get("/api/status/{token}", unknown_token)
