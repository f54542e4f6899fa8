"""The Socket.IO server's transport: malformed packets refused, WebSockets uncompressed and
closable all at once on shutdown."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import engineio
import socketio
from aiohttp import WSCloseCode, web
from engineio.async_drivers import aiohttp as engineio_aiohttp

from . import errors

log = logging.getLogger(__name__)


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engine.io's server, except that disconnecting never waits for a client.

    engine.io's `disconnect()` queues a CLOSE packet and waits until the client fetches it:
    forever for a polling client that is not polling now. It runs on shutdown and on an
    oversized POST, whose request then hung for good. The CLOSE stays queued for a pending or
    next poll; nobody waits for it.
    """

    async def disconnect(self, sid: str | None = None) -> None:
        for key in [sid] if sid is not None else list(self.sockets):
            eio_socket = self.sockets.pop(key, None)
            if eio_socket is not None:
                await eio_socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)


class _OneLineParseErrors(logging.Filter):
    """engine.io logs a traceback for every unparseable polling payload or unknown packet type:
    any client could fill the log. One line is enough."""

    NOISY = frozenset({"post request handler error", "Unknown receive error"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.NOISY and record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{record.msg}: {error.__class__.__name__}: {str(error)[:200]}"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("engineio.server").addFilter(_OneLineParseErrors())


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

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

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

            async def wait(self) -> str | bytes | None:
                # engine.io raises on an empty frame or an unknown packet type and logs a
                # traceback each time: hang up on such a client instead (None = it closed).
                message: str | bytes = await super().wait()
                if isinstance(message, str) and (not message or message[0] not in "0123456"):
                    log.info("Malformed Engine.IO packet %r: closing", message[:20])
                    return None
                return message

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
    reconnect. engine.io's CLOSE (queued without waiting, see EngineServer) reaches pollers
    with their pending or next poll; WebSockets are hung up.
    """
    await sio.eio.disconnect()
    await websockets.close_all()
