"""The Socket.IO server's transport: malformed packets refused, WebSockets uncompressed and
closable all at once on shutdown."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import socketio
from aiohttp import WSCloseCode, web
from engineio.async_drivers import aiohttp as engineio_aiohttp

from . import errors

log = logging.getLogger(__name__)


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """An AsyncServer that answers an undecodable packet with an `error` event.

    python-socketio lets decoding errors (and e.g. `42{}`, an event that is not a list) escape
    to engine.io, which logs a traceback per packet: any client could fill the log. Here it is
    one info line and a clear reply.
    """

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            # Only decoding and packet shape fail here: handlers run in tasks of their own.
            log.info("Malformed packet from %s dropped: %s", eio_sid, str(exc)[:200])
            sid = self.manager.sid_from_eio_sid(eio_sid, "/")
            if sid is not None:
                await self.emit("error", errors.MALFORMED_PACKET, to=sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        # After a client's own CLOSE, engine.io leaves that client's pending long-poll waiting
        # for the ping timeout (45 s): a request and a task held for nothing, and a shutdown
        # that waits for them. Nothing more will be sent to it (no CLOSE packet follows), so
        # end the poll now.
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is not None and reason == self.eio.reason.CLIENT_DISCONNECT:
            eio_socket.queue.put_nowait(None)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        # Checked here, before the handler task starts, so the refusal above applies to it.
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ValueError("an event is a list that starts with its name")
        await super()._handle_event(eio_sid, namespace, id, data)


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
