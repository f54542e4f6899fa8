"""Engine.IO's aiohttp WebSocket, without compression, and closable all at once on shutdown."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import WSCloseCode, web
from engineio.async_drivers import aiohttp as engineio_aiohttp


class WebSockets:
    """The open WebSocket responses of one server."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    def __len__(self) -> int:
        return len(self._open)

    def driver(self) -> type[engineio_aiohttp.WebSocket]:
        """A subclass of engine.io's aiohttp WebSocket that registers here."""
        registry = self._open

        class WebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
            async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
                request = environ["aiohttp.request"]
                # compress=False: permessage-deflate costs ~90 KB per connection (PLATFORM.md),
                # and the Node server never offered it.
                self._sock = web.WebSocketResponse(
                    max_msg_size=self.server.max_http_buffer_size, compress=False
                )
                await self._sock.prepare(request)
                registry.add(self._sock)
                self.environ = environ
                await self.handler(self)
                return self._sock

        return WebSocket

    async def close_all(self) -> None:
        """Close every WebSocket now (Engine.IO's CLOSE packet alone does not make a WebSocket
        client hang up, and the server side would wait for the next ping timeout)."""
        sockets = list(self._open)
        if sockets:
            await asyncio.gather(
                *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sockets),
                return_exceptions=True,
            )


def install(sio: Any, websockets: WebSockets) -> None:
    """Use the registering WebSocket class for this server only (the driver table is shared)."""
    sio.eio._async = {**sio.eio._async, "websocket": websockets.driver()}


async def close_transports(sio: Any, websockets: WebSockets) -> None:
    """Close every Engine.IO session so that clients see `transport close` and reconnect.

    `sio.disconnect(sid)` would send a Socket.IO DISCONNECT, after which clients do not
    reconnect; and `eio.disconnect()` waits for each polling client to fetch its CLOSE packet,
    forever for one that is not polling right now. So: queue CLOSE without waiting (a pending
    poll delivers it), then hang up every WebSocket.
    """
    for eio_socket in list(sio.eio.sockets.values()):
        await eio_socket.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT)
    sio.eio.sockets.clear()
    await websockets.close_all()
