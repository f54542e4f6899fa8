"""The one factory that builds the server: aiohttp app, Socket.IO server, store, background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import socketio
from aiohttp import web

from . import http, jsonlib, transport
from .clock import Clock, wall_ms
from .events import Events
from .settings import Settings
from .store import MemoryStore, RedisStore, connect

log = logging.getLogger(__name__)

SOCKET_PATH: Final = "/socket.io/"
SWEEP_SECONDS: Final = 30.0
SIO: Final = web.AppKey("sio", socketio.AsyncServer)
STORE: Final = web.AppKey("store", MemoryStore)
WEBSOCKETS: Final = web.AppKey("websockets", transport.WebSockets)


OnPrepare = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def cors_headers(origins: str | list[str]) -> OnPrepare:
    """CORS for the REST routes, with the same origins as Socket.IO (which handles its own)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or request.path.startswith(SOCKET_PATH):
            return
        if origins == "*":
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return on_prepare


def build_store(settings: Settings, clock: Clock) -> MemoryStore:
    if settings.redis_url is None:
        return MemoryStore(clock)
    redis = connect(
        settings.redis_url,
        timeout=settings.redis_timeout,
        max_connections=settings.redis_max_connections,
    )
    return RedisStore(clock, redis)


def create_app(settings: Settings, clock: Clock = wall_ms) -> web.Application:
    """Build the whole server; nothing connects or starts until the app starts."""
    app = web.Application(client_max_size=settings.max_message_bytes)
    sio = transport.SocketServer(
        async_mode="aiohttp",
        cors_allowed_origins=settings.cors_origins,
        ping_interval=25,
        ping_timeout=20,
        max_http_buffer_size=settings.max_message_bytes,
        json=jsonlib,
        async_handlers=True,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app, socketio_path=SOCKET_PATH.strip("/"))
    websockets = transport.WebSockets()
    transport.install(sio, websockets)
    app[WEBSOCKETS] = websockets
    store = build_store(settings, clock)
    events = Events(sio, store, clock, code_grace_ms=round(settings.code_grace_seconds * 1000))
    events.attach()
    app[SIO] = sio
    app[STORE] = store
    app[http.EVENTS] = events
    http.add_routes(app)
    app.on_response_prepare.append(cors_headers(settings.cors_origins))
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_sweeper)
    app.on_shutdown.append(_close_transports)
    return app


async def _close_transports(app: web.Application) -> None:
    """On SIGTERM: hang up every client so that it reconnects (to the next instance)."""
    await transport.close_transports(app[SIO], app[WEBSOCKETS])


async def _storage(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    yield
    await store.close()


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Forget expired codes and sessions now and then, so memory does not grow without bound."""
    events = app[http.EVENTS]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            codes = events.codes.sweep(events.clock(), events.code_grace_ms)
            sessions = events.store.sweep()
            if codes or sessions:
                log.debug("Swept %d codes and %d sessions from memory", codes, sessions)

    task = asyncio.create_task(sweep_forever(), name="sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
