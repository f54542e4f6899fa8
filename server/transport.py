"""The Socket.IO server's transport: malformed packets refused, WebSockets uncompressed and
closable all at once on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

import engineio
import socketio
from aiohttp import WSCloseCode, web
from engineio import packet as engineio_packet
from socketio import packet as socketio_packet

from . import errors, websocket
from .instances import SEPARATOR

log = logging.getLogger(__name__)


class PacketQueue:
    """The part of asyncio.Queue (unbounded) that engine.io uses for a socket's outgoing packets.

    An asyncio.Queue holds four deques (its items, getters, putters and its Event's waiters),
    ~3 KB per connection before anything is queued; lists created when needed cost ~0.1 KB.
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._unfinished += 1
        self._wake_getter()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_getter()  # woken, then cancelled: pass the turn on
                raise
        return self._items.pop(0)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            joiners, self._joiners = self._joiners, None
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_result(None)

    async def join(self) -> None:
        if self._unfinished > 0:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner

    def _wake_getter(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engine.io's server, except that disconnecting never waits for a client.

    engine.io's `disconnect()` queues a CLOSE packet and waits until the client fetches it:
    forever for a polling client that is not polling now. It runs on shutdown and on an
    oversized POST, whose request then hung for good. The CLOSE stays queued for a pending or
    next poll; nobody waits for it.
    """

    # Set by the app: every id made here names this instance (see instances.py).
    instance_id = ""

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        return PacketQueue()

    def generate_id(self) -> str:
        return f"{self.instance_id}{SEPARATOR}{super().generate_id()}"

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


async def deliver(
    manager: socketio.AsyncManager,
    event: str,
    data: Any,
    namespace: str,
    room: Any = None,
    skip_sid: Any = None,
) -> None:
    """Queue one event for this process's recipients: the packet encoded once, no task each."""
    if namespace not in manager.rooms:
        return  # nobody has connected to it yet
    if isinstance(data, tuple):
        args = list(data)
    else:
        args = [] if data is None else [data]
    skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
    encoded = manager.server.packet_class(
        socketio_packet.EVENT, namespace=namespace, data=[event, *args]
    ).encode()
    frames = encoded if isinstance(encoded, list) else [encoded]
    eio_packets = [engineio_packet.Packet(engineio_packet.MESSAGE, f) for f in frames]
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid not in skip:
            for eio_packet in eio_packets:
                await manager.server._send_eio_packet(eio_sid, eio_packet)


class DirectManager(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager, without a task per recipient.

    Its emit starts a task for each recipient and waits for them all, even for one socket;
    queueing a packet for a socket does not block, so plain awaits do the same for less
    (profiled: ~15% of the CPU of a check-in). Acks (callbacks) keep the original path.
    """

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None or namespace not in self.rooms:
            await super().emit(event, data, namespace, room, skip_sid, callback, to, **kwargs)
            return
        await deliver(self, event, data, namespace, to or room, skip_sid)


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

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        # Called before engine.io schedules the first ping: one that starts on WebSocket is
        # pinged by server.websocket's heartbeat instead of a task of its own.
        if parse_qs(environ.get("QUERY_STRING", "")).get("transport") == ["websocket"]:
            websocket.adopt(self.eio.sockets[eio_sid])
        await super()._handle_eio_connect(eio_sid, environ)

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
    """The open WebSocket responses of one server, and the heartbeat that pings them."""

    def __init__(self, heartbeat: websocket.Heartbeat) -> None:
        # A plain set, emptied by each handler as it ends (a WeakSet adds a weakref each).
        self._open: set[web.WebSocketResponse] = set()
        self.heartbeat = heartbeat

    def __len__(self) -> int:
        return len(self._open)

    def driver(self) -> type[Any]:
        """engine.io's WebSocket driver for aiohttp, as engine.io uses it (`driver(handler,
        server)`, then `await driver(environ)`), running the connection with server.websocket
        instead of engine.io's tasks, and registering it here."""
        registry = self._open
        heartbeat = self.heartbeat

        class WebSocket:
            __slots__ = ("server", "socket")  # lives as long as the connection

            def __init__(self, handler: Any, server: Any) -> None:
                self.socket = handler.__self__  # engine.io's socket
                self.server = server

            def __call__(self, environ: dict[str, Any]) -> Awaitable[web.WebSocketResponse]:
                # A coroutine, not an async def of its own: one coroutine fewer per connection.
                max_size = self.server.max_http_buffer_size
                return websocket.serve(self.socket, environ, max_size, heartbeat, registry)

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


def install(sio: Any, heartbeat: websocket.Heartbeat | None = None) -> WebSockets:
    """Use the registering WebSocket class for this server only (the driver table is shared);
    its heartbeat must run for the app's lifetime."""
    if heartbeat is None:
        heartbeat = websocket.Heartbeat(sio.eio.ping_interval, sio.eio.ping_timeout)
    websockets = WebSockets(heartbeat)
    sio.eio._async = {**sio.eio._async, "websocket": websockets.driver()}
    return websockets


async def close_transports(sio: Any, websockets: WebSockets, flush_within: float = 1.0) -> None:
    """Close every Engine.IO session so that clients see `transport close` and reconnect.

    `sio.disconnect(sid)` would send a Socket.IO DISCONNECT, after which clients do not
    reconnect. engine.io's CLOSE (queued without waiting, see EngineServer) reaches pollers
    with their pending or next poll; WebSockets are hung up. First every transport gets up
    to `flush_within` seconds (in all) to take what was queued before the CLOSE, e.g. the reply
    to an event that just finished: before the listening socket goes, a poller polls again.
    """
    sockets = list(sio.eio.sockets.values())
    await sio.eio.disconnect()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + flush_within
    for eio_socket in sockets:
        if eio_socket.queue.qsize() and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(eio_socket.queue.join(), left)
    await websockets.close_all()
