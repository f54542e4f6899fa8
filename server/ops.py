"""The operator's routes: /healthz for the platform's health check, /metrics for Prometheus."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.log import server_logger as server_log

from . import __version__
from .metrics import CONTENT_TYPE, Metrics
from .persistence import RedisPersistence
from .store import MemoryStore

METRICS: Final = web.AppKey("metrics", Metrics)
HEALTH_STORE: Final = web.AppKey("health_store", MemoryStore)
HTTP_ERROR_LOG: Final = "Error handling request"  # how aiohttp logs a handler's exception


def redis_state(store: MemoryStore) -> str:
    """ "disabled" without REDIS_URL, else "up" or "down" as the heartbeat (every second, and
    every command) last saw Redis."""
    if not isinstance(store, RedisPersistence):
        return "disabled"
    return "up" if store.answering else "down"


async def healthz(request: web.Request) -> web.Response:
    store = request.app[HEALTH_STORE]
    # Healthy while Redis is away after it once answered: the server keeps serving from memory
    # (it degrades). But a configured Redis never reached is a broken deployment (a wrong
    # password, host or database): every session would be lost at the next restart.
    never_reached = isinstance(store, RedisPersistence) and not store.reached
    body = {
        "status": "unavailable" if never_reached else "ok",
        "redis": redis_state(store),
        "version": __version__,
    }
    return web.json_response(
        body, status=503 if never_reached else 200, headers={"Cache-Control": "no-store"}
    )


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class _CountHttpErrors(logging.Filter):
    """Counts the requests that failed with an unexpected exception: aiohttp answers each with
    500 and logs it as "Error handling request ...".

    Not a middleware: that would keep two more coroutines alive per request, for as long as
    a WebSocket's request lasts (~0.5 KB per connection).
    """

    def __init__(self, collector: Metrics) -> None:
        super().__init__()
        self.collector = collector

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(HTTP_ERROR_LOG):
            self.collector.error("http")
        return True


def count_http_errors(collector: Metrics) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that counts this app's failed requests while it runs."""

    async def counting(app: web.Application) -> AsyncIterator[None]:
        counter = _CountHttpErrors(collector)
        server_log.addFilter(counter)
        yield
        server_log.removeFilter(counter)

    return counting


def install(app: web.Application, collector: Metrics, sio: Any, store: MemoryStore) -> None:
    """Add /healthz and /metrics, and let `collector` watch this server's state."""
    collector.watch(sio, store)
    app[METRICS] = collector
    app[HEALTH_STORE] = store
    app.cleanup_ctx.append(count_http_errors(collector))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
