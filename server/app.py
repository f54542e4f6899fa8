"""The one factory that builds the server: aiohttp app, Socket.IO server, store, background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final

import socketio
from aiohttp import web

from . import demo, http, jsonlib, ops, transport
from .alerts import Alerts
from .clock import Clock, wall_ms
from .events import Events
from .limits import AttemptLimiter
from .metrics import Metrics
from .settings import Settings
from .store import MemoryStore, RedisStore, connect
from .webhooks import Webhooks

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


def build_store(settings: Settings, clock: Clock) -> tuple[MemoryStore, AttemptLimiter]:
    """The session store and the attempt limiter, sharing one Redis client when configured."""
    limit = settings.code_attempts_per_minute
    if settings.redis_url is None:
        return MemoryStore(clock), AttemptLimiter(clock, limit)
    redis = connect(
        settings.redis_url,
        timeout=settings.redis_timeout,
        max_connections=settings.redis_max_connections,
    )
    store = RedisStore(clock, redis)
    return store, AttemptLimiter(clock, limit, redis, lambda: store.available)


def create_app(settings: Settings, clock: Clock = wall_ms) -> web.Application:
    """Build the whole server; nothing connects or starts until the app starts."""
    app = web.Application(client_max_size=settings.max_message_bytes)
    sio = transport.SocketServer(
        client_manager=transport.DirectManager(),
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
    store, limiter = build_store(settings, clock)
    metrics = Metrics()
    events = Events(
        sio,
        store,
        clock,
        code_grace_ms=round(settings.code_grace_seconds * 1000),
        limiter=limiter,
        trust_proxy=settings.trust_proxy,
        metrics=metrics,
    )
    events.attach()
    app[SIO] = sio
    app[STORE] = store
    app[http.EVENTS] = events
    http.add_routes(app)
    ops.install(app, metrics, sio, store)
    demo.add_routes(app)
    app.on_response_prepare.append(cors_headers(settings.cors_origins))
    webhooks = None
    if settings.alert_webhook_url and settings.alert_webhook_secret:
        webhooks = Webhooks(settings.alert_webhook_url, settings.alert_webhook_secret, clock)
    alerts = Alerts(events, webhooks)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_background("sweeper", lambda: _sweep_forever(events)))
    app.cleanup_ctx.append(_background("alerts", alerts.run_forever))
    if webhooks is not None:
        app.cleanup_ctx.append(_background("webhooks", webhooks.run))
    app.on_shutdown.append(_close_transports)
    return app


async def _close_transports(app: web.Application) -> None:
    """On SIGTERM: hang up every client so that it reconnects (to the next instance)."""
    open_sockets = sum(1 for socket in app[SIO].eio.sockets.values() if not socket.closed)
    log.info("Shutting down: closing %d connections", open_sockets)
    await transport.close_transports(app[SIO], app[WEBSOCKETS])


async def _storage(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    yield
    await store.close()


async def _sweep_forever(events: Events) -> None:
    """Forget expired codes and sessions now and then, so memory does not grow without bound."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        codes = events.codes.sweep(events.clock(), events.code_grace_ms)
        sessions = events.store.sweep()
        if codes or sessions:
            log.debug("Swept %d codes and %d sessions from memory", codes, sessions)


def _background(
    name: str, work: Callable[[], Coroutine[Any, Any, None]]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs `work` for the app's lifetime."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(work(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run
