"""The one factory that builds the server: aiohttp app, Socket.IO server, store, background work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final, NamedTuple

import socketio
from aiohttp import web

from . import demo, http, jsonlib, ops, tasks, transport
from .alerts import Alerts
from .clock import Clock, wall_ms
from .codes import Codes
from .crashes import Bindings, Sweeper
from .events import Events
from .guard import GUARD, Guard
from .instances import Instances
from .limits import AttemptLimiter, RateLimiter
from .metrics import Metrics
from .pairscripts import PairingScripts
from .persistence import RedisPersistence, RedisStore, connect
from .redislane import Lane
from .relay import Relay
from .settings import Settings
from .store import MemoryStore
from .webhooks import Webhooks

log = logging.getLogger(__name__)

SOCKET_PATH: Final = "/socket.io/"
SWEEP_SECONDS: Final = 30.0
SIO: Final = web.AppKey("sio", socketio.AsyncServer)
STORE: Final = web.AppKey("store", MemoryStore)
WEBSOCKETS: Final = web.AppKey("websockets", transport.WebSockets)


class Drain:
    """When the drain that SIGTERM started must be over (time.monotonic()); None before it.
    An object of its own: a started app's state must not change (aiohttp warns)."""

    deadline: float | None = None


DRAIN: Final = web.AppKey("drain", Drain)

# Shares of SHUTDOWN_TIMEOUT: the client events in flight may take 40% of it, aiohttp's wait
# for the HTTP requests still open 2 x 15% (it waits, then cancels and waits again; after the
# hang-up there are hardly any), and the store's final flush what is left, at least 30%.
EVENTS_SHARE: Final = 0.4
REQUESTS_SHARE: Final = 0.15


def requests_timeout(settings: Settings) -> float:
    """aiohttp's `shutdown_timeout`: its share of SHUTDOWN_TIMEOUT."""
    return settings.shutdown_timeout * REQUESTS_SHARE


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


class Shared(NamedTuple):
    """What this instance shares with the others through Redis (or keeps alone without it)."""

    instances: Instances
    store: MemoryStore
    limiter: AttemptLimiter
    registrations: RateLimiter
    codes: Codes
    relay: Relay | None
    bindings: Bindings
    scripts: PairingScripts | None  # pairing events in one Redis call each


def build_shared(settings: Settings, clock: Clock) -> Shared:
    """Sessions, codes, attempt counts, heartbeats and delivery: one Redis client for all."""
    limit = settings.code_attempts_per_minute
    registrations = settings.code_registrations_per_minute
    grace_ms = settings.code_grace_ms
    per_address = settings.pending_codes_per_address
    if settings.redis_url is None:
        instances = Instances(clock)
        codes = Codes(clock, instances, grace_ms, pending_per_address=per_address)
        return Shared(
            instances,
            MemoryStore(clock),
            AttemptLimiter(clock, limit),
            RateLimiter(clock, registrations),
            codes,
            None,
            Bindings(),
            None,
        )
    redis = connect(
        settings.redis_url,
        timeout=settings.redis_timeout,
        max_connections=settings.redis_max_connections,
    )
    # The heartbeat has a connection of its own: it judges Redis, so a pool busy with clients
    # must not make it late (and Redis "down").
    beats = connect(settings.redis_url, timeout=settings.redis_timeout, max_connections=1)
    instances = Instances(clock, beats)
    # The scripts run per event (the group commit, pairing) share one pipelined connection.
    lane = Lane(redis, settings.redis_timeout)
    store = RedisStore(clock, redis, instances, lane)

    def available() -> bool:
        # Redis answers (codes and counts go there), even while session writes still wait
        # for a write-back after Redis lost its data.
        return store.answering

    return Shared(
        instances,
        store,
        AttemptLimiter(clock, limit, redis, available),
        RateLimiter(clock, registrations, redis, available),
        Codes(
            clock,
            instances,
            grace_ms,
            redis,
            available,
            pending_per_address=per_address,
            records=store.records,
        ),
        Relay(redis, instances),
        Bindings(redis, lane),
        PairingScripts(lane),
    )


def create_app(settings: Settings, clock: Clock = wall_ms) -> web.Application:
    """Build the whole server; nothing connects or starts until the app starts."""
    app = web.Application(client_max_size=settings.max_message_bytes)
    shared = build_shared(settings, clock)
    metrics = Metrics()
    guard = Guard(settings, metrics)
    sio = transport.SocketServer(
        client_manager=shared.relay or transport.DirectManager(),
        async_mode="aiohttp",
        cors_allowed_origins=settings.cors_origins,
        ping_interval=25,
        ping_timeout=20,
        max_http_buffer_size=settings.max_message_bytes,
        json=jsonlib,
        async_handlers=True,
        logger=False,
        engineio_logger=False,
        guard=guard,
    )
    sio.eio.instance_id = shared.instances.id
    sio.attach(app, socketio_path=SOCKET_PATH.strip("/"))
    # Every other method reaches engine.io too, which answers 400 as the Engine.IO test suite
    # expects (aiohttp's router would answer 405).
    app.router.add_route("*", SOCKET_PATH, sio.eio.handle_request)
    websockets = transport.install(sio, driver=settings.websocket_driver)
    app[WEBSOCKETS] = websockets
    app[GUARD] = guard
    store = shared.store
    events = Events(
        sio,
        store,
        clock,
        code_grace_ms=settings.code_grace_ms,
        limiter=shared.limiter,
        trust_proxy=settings.trust_proxy,
        metrics=metrics,
        instances=shared.instances,
        codes=shared.codes,
        bindings=shared.bindings,
        guard=guard,
        registrations=shared.registrations,
        pending_codes_per_socket=settings.pending_codes_per_socket,
        trackers_per_session=settings.trackers_per_session,
        scripts=shared.scripts,
    )
    events.attach()
    shared.bindings.watch(shared.instances, events.presence, store.records)
    if isinstance(store, RedisPersistence):
        store.on_crash = metrics.task_crashed
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
    crashed = metrics.task_crashed
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_instances(shared, crashed))
    app.cleanup_ctx.append(_background("sweeper", lambda: _sweep_forever(events), crashed))
    app.cleanup_ctx.append(_background("alerts", alerts.run_forever, crashed))
    app.cleanup_ctx.append(_background("pings", websockets.heartbeat.run, crashed))
    if webhooks is not None:
        app.cleanup_ctx.append(_background("webhooks", webhooks.run, crashed))
    if shared.relay is not None:  # other instances may die: their people are told from here
        sweeper = Sweeper(shared.instances, shared.bindings, events.instance_died)
        app.cleanup_ctx.append(_background("crash-sweeper", sweeper.run_forever, crashed))
    app[DRAIN] = Drain()
    app.on_shutdown.append(_drain(events, settings.shutdown_timeout))
    return app


def _instances(
    shared: Shared, crashed: Callable[[str], None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Heartbeats and the relay's listener, from before the first client until the drain is
    over; a clean exit takes this instance out of the live set at once. Both supervised: a
    dead heartbeat would make the other instances drop this live instance's sockets."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        instances = shared.instances
        await instances.check()  # others know of this instance before it serves anyone
        heartbeat = tasks.supervise("instance-heartbeat", instances.run_forever, crashed)
        sio = app[SIO]
        relay = shared.relay
        if relay is not None and not sio.manager_initialized:
            # The listener: else it starts with the first client. python-socketio would start
            # it unwatched; write_only keeps initialize() from it, and it runs supervised.
            sio.manager_initialized = True
            relay.write_only = True
            relay.initialize()
            relay.write_only = False
            relay.thread = tasks.supervise("relay-listener", relay._thread, crashed)
        yield
        await tasks.stop(heartbeat)
        if shared.relay is not None:
            await shared.relay.close()
        await instances.leave()
        await instances.close()

    return run


def _drain(events: Events, budget: float) -> Callable[[web.Application], Awaitable[None]]:
    """On SIGTERM (aiohttp has stopped listening): let the client events in flight finish,
    then hang up every client so that it reconnects (to the next instance); the store's
    cleanup flushes last. All of it within `budget` seconds."""

    async def drain(app: web.Application) -> None:
        started = time.monotonic()
        deadline = app[DRAIN].deadline = started + budget
        unfinished = await events.finish_in_flight(budget * EVENTS_SHARE)
        if unfinished:
            log.warning("Shutting down with %d client events unfinished", unfinished)
        open_sockets = sum(1 for socket in app[SIO].eio.sockets.values() if not socket.closed)
        log.info("Shutting down: closing %d connections", open_sockets)
        events.draining = True
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await transport.close_transports(app[SIO], app[WEBSOCKETS])
        except TimeoutError:
            log.error("SHUTDOWN_TIMEOUT reached while closing connections")
        log.info("Connections closed in %.2f s", time.monotonic() - started)

    return drain


async def _storage(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    yield
    deadline = app[DRAIN].deadline
    if deadline is None:
        await store.close()
        return
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
            await store.close()
    except TimeoutError:
        log.error("SHUTDOWN_TIMEOUT reached before the store finished writing")


async def _sweep_forever(events: Events) -> None:
    """Forget expired codes and sessions now and then, so memory does not grow without bound."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        codes = events.codes.sweep(events.clock(), events.code_grace_ms)
        sessions = events.store.sweep()
        if codes or sessions:
            log.debug("Swept %d codes and %d sessions from memory", codes, sessions)


def _background(
    name: str, work: Callable[[], Coroutine[Any, Any, None]], crashed: Callable[[str], None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs `work` for the app's lifetime, supervised (tasks.py)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        task = tasks.supervise(name, work, crashed)
        yield
        await tasks.stop(task)

    return run
