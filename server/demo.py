"""A demo page at /demo: two browser tabs pair and check in, with the real socket.io-client.

The browser build of socket.io-client is served from `static/` (no CDN): it is copied from the
npm package pinned by tests/node/package-lock.json (see scripts/vendor-socketio.sh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

STATIC: Final = Path(__file__).resolve().parent / "static"
HTML: Final = "text/html; charset=utf-8"
FILES: Final = {
    "demo.js": "application/javascript; charset=utf-8",
    "socket.io.min.js": "application/javascript; charset=utf-8",
}


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "demo.html", headers={"Content-Type": HTML})


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(
        STATIC / name,
        headers={"Content-Type": FILES[name], "Cache-Control": "public, max-age=300"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/demo", page)
    app.router.add_get("/demo/{name}", asset)
