"""The operator's routes: /healthz for the platform's health check, /metrics for Prometheus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from . import __version__
from .metrics import CONTENT_TYPE, Metrics
from .store import MemoryStore, RedisPersistence

METRICS: Final = web.AppKey("metrics", Metrics)
HEALTH_STORE: Final = web.AppKey("health_store", MemoryStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def redis_state(store: MemoryStore) -> str:
    """ "disabled" without REDIS_URL, else "up" or "down" as the store last saw Redis."""
    if not isinstance(store, RedisPersistence):
        return "disabled"
    return "up" if store.available else "down"


async def healthz(request: web.Request) -> web.Response:
    # Healthy while Redis is away: the server keeps serving from memory (it degrades).
    body = {
        "status": "ok",
        "redis": redis_state(request.app[HEALTH_STORE]),
        "version": __version__,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def count_http_errors(collector: Metrics) -> Any:
    """A middleware counting requests that failed with an unexpected exception."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            collector.error("http")
            raise

    return middleware


def install(app: web.Application, collector: Metrics, sio: Any, store: MemoryStore) -> None:
    """Add /healthz and /metrics, and let `collector` watch this server's state."""
    collector.watch(sio, store)
    app[METRICS] = collector
    app[HEALTH_STORE] = store
    app.middlewares.append(count_http_errors(collector))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
