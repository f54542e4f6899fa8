"""Engine.IO over WebSocket without a task per connection, and out of aiohttp.

engine.io runs each WebSocket with a writer task, a reader that starts a task and an
asyncio.wait_for per message, and a task sleeping until the next ping; aiohttp holds the
request, its parser, the WebSocketResponse with its reader and writer, and the task of its
connection loop for as long as the WebSocket is open (~12 KB of an idle connection's ~20).
Here aiohttp answers the handshake's request only: the 101 is written, and the connection is
handed to an EngineWebSocket (server.wsprotocol reads the frames), which passes the packets to
engine.io / Socket.IO; packets are written to the socket as they are sent, and one heartbeat
for all connections sends the pings and hangs up on the silent ones. What goes over the wire
is unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import WSMessage, WSMsgType, web
from engineio import exceptions
from engineio import packet as eio

from . import logs
from .tasks import running_loop
from .wheel import Wheel
from .wsprotocol import Detached, WebSocketProtocol, accept, detach

log = logging.getLogger(__name__)

TEXT, BINARY = 0x1, 0x2


def frame(data: str | bytes) -> bytes:
    """One unmasked, uncompressed WebSocket frame (RFC 6455 5.2), as a server sends it."""
    payload, opcode = (data.encode(), TEXT) if isinstance(data, str) else (data, BINARY)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


PING: Final = frame(eio.Packet(eio.PING).encode())  # the same frame for every client


class Outbox:
    """The frames sent during one turn of the event loop, written at its end: one write (one
    send() call) per connection per turn, however many packets it was sent meanwhile (a
    check-in sends the app timersSet and checkInConfirmed; the send() calls were most of the
    CPU of an emit)."""

    __slots__ = ("_due", "_handle")

    def __init__(self) -> None:
        self._due: list[Connection] = []
        self._handle: asyncio.Handle | None = None

    def add(self, conn: Connection) -> None:
        self._due.append(conn)
        if self._handle is None:
            self._handle = running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every connection's frames now."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        due, self._due = self._due, []
        for conn in due:
            conn.flush()


class Connection:
    """An Engine.IO socket on a WebSocket: its outgoing queue, and its heartbeat's state.

    It stands in for the socket's queue (engine.io sends by `await socket.queue.put(packet)`):
    each packet is framed at once and written, in order, at the end of the loop's turn (see
    Outbox), without waiting for the client to read. A client that lets more than `limit` bytes
    pile up unread in the transport's buffer is hung up on (300,000 getStatus without reading
    the replies held +155 MB).
    """

    __slots__ = (
        "heard",
        "limit",
        "outbox",
        "pending",
        "ping_at",
        "slot",
        "socket",
        "transport",
        "ws",
    )

    def __init__(
        self,
        socket: Any,
        ws: WebSocketProtocol,
        transport: asyncio.Transport,
        now: float,
        limit: int = 0,
        outbox: Outbox | None = None,
    ) -> None:
        self.socket = socket
        self.ws = ws
        self.transport = transport
        self.heard = now  # when the client last sent anything
        self.ping_at: float | None = None  # when to ping; None while a ping awaits its pong
        self.slot = 0  # where the heartbeat keeps it
        self.limit = limit  # unread bytes before a hang-up; 0: no limit
        self.outbox = outbox  # None: every packet is written at once
        self.pending: bytes | list[bytes] | None = None  # framed, for the outbox to write

    @property
    def open(self) -> bool:
        return not self.ws.closed and not self.transport.is_closing()

    def write(self, pkt: eio.Packet | None) -> None:
        """Write a packet now, after what is pending."""
        # None asks engine.io's writer to stop: the reader loop closes the WebSocket instead.
        if pkt is not None:
            self.send(frame(pkt.encode()))
        self.flush()

    def send(self, data: bytes) -> None:
        """Write a frame at the end of the loop's turn (at once without an outbox)."""
        pending = self.pending
        if pending is None:
            self.pending = data
            if self.outbox is None:
                self.flush()
            else:
                self.outbox.add(self)
        elif isinstance(pending, list):
            pending.append(data)
        else:
            self.pending = [pending, data]

    def flush(self) -> None:
        """Write what is pending."""
        pending, self.pending = self.pending, None
        if pending is None or not self.open:
            return
        self.transport.write(pending if isinstance(pending, bytes) else b"".join(pending))
        if self.limit and self.transport.get_write_buffer_size() > self.limit:
            self._overflowed()

    def _overflowed(self) -> None:
        guard = getattr(self.socket.server, "guard", None)
        if guard is not None:
            guard.metrics.refused("outbound_buffer_bytes")
        client = {"client": getattr(self.socket, "client", "unknown")}
        log.info("Closing %s: over %d bytes unread", self.socket.sid, self.limit, extra=client)
        # Aborted, not closed: a close frame would only queue behind what it does not read.
        # The reader loop then ends and closes the Engine.IO socket.
        self.transport.abort()

    # The part of a queue that engine.io and server.transport use.
    async def put(self, pkt: eio.Packet | None) -> None:
        self.put_nowait(pkt)

    def put_nowait(self, pkt: eio.Packet | None) -> None:
        if pkt is not None:
            self.send(frame(pkt.encode()))

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    async def join(self) -> None:
        return None


class Heartbeat:
    """Pings every WebSocket client `interval` s after its last pong, and hangs up on one
    that sent nothing for `interval + timeout` s: engine.io's ping task and read timeout, for
    all connections at once.

    A timer wheel: each connection sits in the slot of the second it must next be looked at,
    no later than its next ping or deadline, and is filed again when looked at. That is about
    two visits per connection per ping interval, and nothing per connection in between.
    """

    def __init__(
        self,
        interval: float,
        timeout: float,
        *,
        tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.limit = interval + timeout
        self.tick = tick
        self.clock = clock
        self._wheel: Wheel[Connection] = Wheel(tick, clock())
        self._closing: set[asyncio.Task[Any]] = set()
        # The frames of every connection, written at the end of each turn of the loop.
        self.outbox = Outbox()

    def __len__(self) -> int:
        return len(self._wheel)

    def _file(self, conn: Connection, when: float) -> None:
        conn.slot = self._wheel.slot(when)
        self._wheel.file(conn, conn.slot)

    def watch(self, conn: Connection, *, ping: bool) -> None:
        """Start looking after `conn`; `ping`: now in charge of its pings (else engine.io's
        ping task has one on the way, and the pong puts this heartbeat in charge)."""
        now = self.clock()
        conn.heard = now
        conn.ping_at = now + self.interval if ping else None
        self._file(conn, now + self.interval)

    def forget(self, conn: Connection) -> None:
        """Stop looking after `conn` (and holding it: it holds the whole connection)."""
        self._wheel.forget(conn, conn.slot)

    def heard(self, conn: Connection, pkt_type: int) -> None:
        """The client sent a packet: it is alive, and a pong schedules the next ping."""
        now = conn.heard = self.clock()
        # As engine.io's schedule_ping: only a pong to a ping of ours starts the next cycle.
        if pkt_type == eio.PONG and conn.socket.last_ping:
            conn.socket.last_ping = None
            conn.ping_at = now + self.interval

    def turn(self) -> None:
        """Look at every connection whose slot is due."""
        now = self.clock()
        # Those of the current second too: each visit looks at the times themselves.
        for conn in self._wheel.take(math.ceil(now / self.tick)):
            self._visit(conn, now)

    def _visit(self, conn: Connection, now: float) -> None:
        socket = conn.socket
        if not conn.open:
            return  # forgotten: its reader loop has ended or is ending
        if now - conn.heard >= self.limit:
            self._hang_up(conn)
            return
        if conn.ping_at is not None and now >= conn.ping_at:
            conn.ping_at = None
            if not socket.closing and not socket.closed:
                socket.last_ping = time.time()  # engine.io's service task checks it
                conn.send(PING)
                conn.flush()
        # A later pong sets ping_at no earlier than now + interval: look again by then.
        ping_at = conn.ping_at if conn.ping_at is not None else now + self.interval
        self._file(conn, min(ping_at, conn.heard + self.limit))

    def _hang_up(self, conn: Connection) -> None:
        # As engine.io's read timeout: close the WebSocket; the reader loop then closes the
        # Engine.IO socket ("transport close").
        conn.flush()
        task = asyncio.get_running_loop().create_task(conn.ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self) -> None:
        """Turn the wheel every `tick` seconds, forever."""
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.turn()
            except Exception:
                log.exception("Heartbeat failed")


def packet_data(msg: WSMessage, max_size: int) -> str | bytes | None:
    """The Engine.IO packet in an aiohttp WebSocket message (see engine_packet)."""
    if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
        return None
    return engine_packet(msg.data, max_size)


def engine_packet(data: str | bytes, max_size: int) -> str | bytes | None:
    """The Engine.IO packet in a WebSocket message; None when the client sent too much or
    garbage.

    engine.io raises on an empty frame or an unknown packet type and logs a traceback each
    time: such a client is hung up on instead.
    """
    if isinstance(data, str) and (not data or data[0] not in "0123456"):
        client = {"client": logs.CLIENT.get() or "unknown"}
        log.info("Malformed Engine.IO packet %r: closing", data[:20], extra=client)
        return None
    if len(data) > max_size:
        return None
    return data


PROBING, UPGRADING, OPEN = 0, 1, 2  # EngineWebSocket.state
# Packets read and not handled yet, in bytes (as aiohttp's reader queue, 64 KiB), each counted
# with about what its Packet object costs: over this the transport stops reading.
BACKLOG_BYTES: Final = 1 << 16
PACKET_OVERHEAD: Final = 64


class EngineWebSocket(WebSocketProtocol):
    """An Engine.IO socket over a WebSocket taken out of aiohttp: its upgrade from polling
    (probe, NOOP, UPGRADE), then every packet to engine.io / Socket.IO as engine.io's
    AsyncSocket._websocket_handler would pass it.

    A pong is handled as it is read. The other packets are handled in order, by a task that
    runs while there are some (none while the connection is idle); while it has more than
    BACKLOG_BYTES to go, the transport stops reading (the client is pushed back by TCP, as
    aiohttp's reader did).
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_context",
        "_event_now",
        "_on_message",
        "_task",
        "conn",
        "heartbeat",
        "outbound_bytes",
        "registry",
        "socket",
        "state",
    )

    def __init__(
        self,
        socket: Any,
        transport: asyncio.Transport,
        max_size: int,
        heartbeat: Heartbeat,
        registry: set[Any],
        outbound_bytes: int,
    ) -> None:
        super().__init__(transport, max_size)
        self.socket = socket
        self.heartbeat = heartbeat
        self.registry = registry
        self.outbound_bytes = outbound_bytes
        self.conn: Connection | None = None
        self.state = PROBING if socket.connected else OPEN
        if socket.connected:
            socket.upgrading = True  # engine.io answers its polls with a NOOP meanwhile
        self._backlog: list[eio.Packet] | None = None
        self._backlog_bytes = 0
        self._task: asyncio.Task[None] | None = None
        # The per-client logging context of the request, for what this socket logs.
        self._context = contextvars.copy_context()
        handler = socket.server.handlers.get("message")
        self._on_message = handler if inspect.iscoroutinefunction(handler) else None
        # The Socket.IO server's synchronous start of an event (transport.SocketServer).
        self._event_now = getattr(getattr(handler, "__self__", None), "event_now", None)
        registry.add(self)

    def open(self, answer: bytes = b"") -> None:
        """The Engine.IO socket is on this WebSocket from now on; `answer` (the handshake's
        101, not yet written) goes out in the same write as what was queued."""
        socket = self.socket
        upgrade = self.state != OPEN
        self.state = OPEN
        socket.connected = socket.upgraded = True
        heartbeat = self.heartbeat
        self.conn = conn = Connection(
            socket, self, self.transport, heartbeat.clock(), self.outbound_bytes, heartbeat.outbox
        )
        # What was queued during the upgrade goes first, then the WebSocket is the queue.
        queued, socket.queue = socket.queue, conn
        if answer:
            conn.send(answer)
        while not queued.empty():
            pkt = queued.get_nowait()
            conn.write(pkt)
            queued.task_done()
            if pkt is not None and pkt.packet_type == eio.OPEN:
                pkt.data = None  # engine.io's connect handler holds its OPEN packet till the end
        conn.flush()  # the answer, if nothing was queued after it
        # A session that started on polling has engine.io's ping task on the way; its pong
        # hands the pings over. One that started here was adopted before its first ping.
        heartbeat.watch(conn, ping=not upgrade)

    def message(self, data: str | bytes) -> None:
        conn = self.conn
        if data == "3" and conn is not None:  # a pong, as engine.io decodes it
            self.heartbeat.heard(conn, eio.PONG)
            return
        self._context.run(self._received, data)

    def _received(self, data: str | bytes) -> None:
        if engine_packet(data, self.max_size) is None:
            self.end()
            return
        if self.state != OPEN:
            self._upgrading(data)
            return
        assert self.conn is not None
        try:
            pkt = eio.Packet(encoded_packet=data)
        except Exception as exc:  # engine.io decodes JSON here; nothing known raises
            log.info("Malformed Engine.IO packet: %s: closing", str(exc)[:200])
            self.end()
            return
        self.heartbeat.heard(self.conn, pkt.packet_type)
        if pkt.packet_type == eio.PONG:
            return
        if self._backlog is None:
            # An event with nothing before it: its handling starts now (no task to get there).
            event_now = self._event_now
            if (
                pkt.packet_type == eio.MESSAGE
                and event_now is not None
                and event_now(self.socket.sid, pkt.data)
            ):
                return
            self._backlog = [pkt]
            self._task = running_loop().create_task(self._handle())
        else:
            self._backlog.append(pkt)
        self._backlog_bytes += len(data) + PACKET_OVERHEAD
        if self._backlog_bytes > BACKLOG_BYTES and not self.transport.is_closing():
            self.transport.pause_reading()

    def _upgrading(self, data: str | bytes) -> None:
        """engine.io's upgrade of a polling session: probe, end the pending poll, UPGRADE."""
        socket = self.socket
        if self.state == PROBING:
            if data != "2probe":
                log.debug("%s: failed WebSocket upgrade, no probe", socket.sid)
                socket.upgrading = False
                self.end()
                return
            self.transport.write(frame(eio.Packet(eio.PONG, data="probe").encode()))
            socket.queue.put_nowait(eio.Packet(eio.NOOP))  # ends the pending poll
            self.state = UPGRADING
            return
        if not isinstance(data, str) or not data.startswith("5"):
            log.debug("%s: failed WebSocket upgrade, no UPGRADE packet", socket.sid)
            socket.upgrading = False
            self.end()
            return
        socket.upgrading = False
        self.open()

    async def _handle(self) -> None:
        """Hand the packets read to engine.io / Socket.IO, in order."""
        socket = self.socket
        on_message = self._on_message
        try:
            # What was read before the connection ended is handled too (as aiohttp's reader
            # queue gave it), unless the Engine.IO socket is closed.
            while (backlog := self._backlog) and not socket.closed:
                pkt = backlog.pop(0)
                try:
                    if pkt.packet_type == eio.MESSAGE and on_message is not None:
                        try:
                            await on_message(socket.sid, pkt.data)
                        except Exception:
                            socket.server.logger.exception("message async handler error")
                    else:
                        await socket.receive(pkt)
                except exceptions.UnknownPacketError:
                    pass
                except exceptions.SocketIsClosedError:
                    self.end()
                    break
                except Exception:
                    logging.getLogger("engineio.server").exception("Unknown receive error")
                if pkt.packet_type == eio.CLOSE or socket.closed:
                    self.end()  # the client left, or the server hung up on it
                    break
        finally:
            self._backlog, self._backlog_bytes = None, 0
            if not self.transport.is_closing():
                self.transport.resume_reading()
            if self.closed:
                await self._close_socket()
            self._task = None

    def ended(self) -> None:
        if self.registry is None:
            return  # once
        self.registry.discard(self)
        self.registry = None  # type: ignore[assignment]
        conn = self.conn
        if conn is not None:
            self.heartbeat.forget(conn)
        if self.state != OPEN:
            self.socket.upgrading = False
            return  # the session goes on polling
        if conn is not None:
            conn.flush()  # e.g. engine.io's CLOSE, before the close frame
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._close_socket(), context=self._context
            )

    async def _close_socket(self) -> None:
        await discard(self.socket, self.socket.server.reason.TRANSPORT_CLOSE)


async def serve(
    socket: Any,
    environ: dict[str, Any],
    max_size: int,
    heartbeat: Heartbeat,
    registry: set[Any],
    outbound_bytes: int = 0,
) -> web.StreamResponse:
    """Accept the WebSocket of `environ` and hand its connection to an EngineWebSocket, out
    of aiohttp: aiohttp's request, response and task end here."""
    request = environ["aiohttp.request"]
    transport = request.transport
    try:
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        answer = accept(request)
    except Exception:
        # A session that was to start on this WebSocket is closed at once: nothing else
        # will use it. A polling session's failed upgrade leaves the session as it was.
        if not socket.connected:
            await discard(socket, socket.server.reason.TRANSPORT_ERROR)
        raise
    except BaseException:  # cancelled: engine.io's service task reaps the session
        if not socket.connected:
            release(socket)
        raise
    if socket.connected:
        # Socket.IO keeps the handshake's environ; nothing reads this one again.
        environ.clear()
    # compress=False in effect: permessage-deflate costs ~90 KB per connection
    # (PLATFORM.md), and the Node server never offered it.
    ws = EngineWebSocket(socket, transport, max_size, heartbeat, registry, outbound_bytes)
    tail = detach(request, ws)
    if ws.state == OPEN:
        ws.open(answer)  # the 101 and the OPEN packet in one write
    else:
        transport.write(answer)
    if tail:
        ws.data_received(tail)
    return Detached()


def adopt(socket: Any) -> None:
    """Take over the pings of a session that starts on WebSocket, before engine.io schedules
    its ping task (engine.io only schedules one when a ping cycle has completed)."""
    socket.last_ping = None


async def discard(socket: Any, reason: str) -> None:
    """Close the Engine.IO session of a WebSocket that ended, or that never opened (the
    handshake was refused, or the client left), and forget it: as engine.io's handle_request
    does once its WebSocket handler returns (ours returns as soon as the WebSocket is open)."""
    server = socket.server
    try:
        await socket.close(wait=False, abort=True, reason=reason)
    except Exception:
        log.exception("Closing %s failed", socket.sid)
    if socket.closed and server.sockets.get(socket.sid) is socket:
        del server.sockets[socket.sid]


def release(socket: Any) -> None:
    """Undo `adopt` for a session whose WebSocket never opened and could not be closed at
    once (cancelled): engine.io's service task reaps it once its ping timeout has passed."""
    if socket.last_ping is None:
        socket.last_ping = time.time()
