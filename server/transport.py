"""The Socket.IO server's transport: malformed packets refused, WebSockets uncompressed and
closable all at once on shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, parse_qsl

import engineio
import socketio
from aiohttp import WSCloseCode, web
from engineio import async_socket, exceptions
from engineio import packet as engineio_packet
from engineio import payload as engineio_payload
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet as socketio_packet

from . import errors, logs, websocket
from .guard import BINARY_STRIKES, EVENT_OF, Guard
from .instances import SEPARATOR
from .limits import client_address
from .pings import PollingPings
from .randbytes import RANDOM
from .rooms import IndexedRooms
from .settings import Settings
from .tasks import running_loop

log = logging.getLogger(__name__)

# How often the sweep of Engine.IO sockets wakes, s (see EngineServer._service_task).
SWEEP_TICK: Final = 1.0

# What decoding a Socket.IO packet raises (msgspec's DecodeError is a ValueError).
DECODING: Final = (ValueError, LookupError, TypeError, AttributeError, RecursionError)
BINARY_TYPES: Final = (socketio_packet.BINARY_EVENT, socketio_packet.BINARY_ACK)
KNOWN_TYPES: Final = (
    socketio_packet.CONNECT,
    socketio_packet.DISCONNECT,
    socketio_packet.EVENT,
    socketio_packet.ACK,
    *BINARY_TYPES,
)


class Packet(socketio_packet.Packet):  # type: ignore[misc]
    """python-socketio's packet, with a cheaper test for binary data: its own builds a list
    and reduces it with a lambda at every level of every packet made (5% of a check-in)."""

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        if isinstance(data, bytes | bytearray):
            return True
        if isinstance(data, list):
            items: Any = data
        elif isinstance(data, dict):
            items = data.values()
        else:
            return False
        for item in items:
            # Strings and numbers, most of every payload, without a call each.
            if type(item) not in _SCALARS and cls.data_is_binary(item):
                return True
        return False


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _size(item: Any) -> int:
    """About what a queued Engine.IO packet costs to hold: its payload."""
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, str | bytes) else 16


class PacketQueue:
    """The part of asyncio.Queue (unbounded) that engine.io uses for a socket's outgoing packets.

    An asyncio.Queue holds four deques (its items, getters, putters and its Event's waiters),
    ~3 KB per connection before anything is queued; lists created when needed cost ~0.1 KB.

    Bounded: a poller that does not poll while its packets pile up past `limit` bytes is
    `overflow`'s to hang up on (one that sent 300,000 events without reading the replies
    held +155 MB). What is queued is dropped then, and nothing more is taken.
    """

    __slots__ = ("_bytes", "_getters", "_items", "_joiners", "_unfinished", "limit", "overflow")

    def __init__(
        self, limit: int = 0, overflow: Callable[[PacketQueue], None] | None = None
    ) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None
        self._bytes = 0
        self.limit = limit  # 0: no limit
        self.overflow = overflow

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        if self.limit and item is not None:
            if self.overflow is None:
                return  # overflowed: hung up on
            self._bytes += _size(item)
            if self._bytes > self.limit:
                self._overflowed()
                return
        self._items.append(item)
        self._unfinished += 1
        self._wake_getter()

    def _overflowed(self) -> None:
        overflow, self.overflow = self.overflow, None
        self._bytes = 0
        for _ in range(len(self._items)):
            self.task_done()
        self._items.clear()
        if overflow is not None:
            overflow(self)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._taken(self._items.pop(0))

    def _taken(self, item: Any) -> Any:
        if self.limit and item is not None:
            self._bytes -= _size(item)
        return item

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
        return self._taken(self._items.pop(0))

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


F = TypeVar("F", bound=Callable[..., Any])


def _coroutine_function(func: F) -> F:
    """Mark a plain function that returns a coroutine as a coroutine function, as aiohttp's
    router requires of a handler (inspect.markcoroutinefunction; Python 3.11 has only asyncio's
    marker)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return mark(func)  # type: ignore[no-any-return]
    setattr(func, "_is_coroutine", asyncio.coroutines._is_coroutine)  # type: ignore[attr-defined]  # noqa: B010
    return func


class InvalidPayloadError(exceptions.EngineIOError):  # type: ignore[misc]
    """A polling POST whose body is not an Engine.IO payload."""


class DuplicatePollError(exceptions.EngineIOError):  # type: ignore[misc]
    """A polling GET while another one of the same session is pending."""


class PollingSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    """engine.io's socket, with the two polling rules of the Engine.IO v4 spec it does not
    enforce: an invalid payload, and a second concurrent GET, close the session with an HTTP
    400 (engine.io answered the first 200 and logged a traceback, and let both GETs wait).

    Raising an EngineIOError from these handlers is engine.io's own way to that answer: it
    disconnects the session (its CLOSE ends a pending poll) and answers 400.
    """

    polling = False  # a GET of this session is pending
    last_ping: float | None  # engine.io's: when the unanswered ping went out
    # With WEBSOCKET_DRIVER=stock, the transport of its WebSocket: aborted on a hang-up (its
    # writer task may be stuck sending to a client that does not read).
    websocket_transport: asyncio.BaseTransport | None = None

    def schedule_ping(self) -> None:
        """engine.io's, without a task per ping cycle: the server's PollingPings queues the
        next PING (only a pong to a ping of ours, or the connect, starts a cycle)."""
        if self.last_ping:
            self.last_ping = None
            self.server.pings.schedule(self)

    def handle_get_request(self, environ: dict[str, Any]) -> Awaitable[Any]:
        # Not a coroutine of its own on the way to a WebSocket: its frame would live as long
        # as the connection.
        upgrade = environ.get("HTTP_UPGRADE")
        if upgrade:
            if not self.connected and upgrade.lower() == "websocket":
                # A session starting on WebSocket (engine.io asks this of no other new one):
                # the handshake's own checks answer 400 to one that is not valid. engine.io's
                # polled when `Connection` did not name the upgrade, and its packets, given
                # as the response, were a 500.
                return self._upgrade_websocket(environ)  # type: ignore[no-any-return]
            return super().handle_get_request(environ)  # type: ignore[no-any-return]
        return self._poll(environ)

    async def _poll(self, environ: dict[str, Any]) -> Any:
        """engine.io's long poll (handle_get_request and poll in one coroutine: a client that
        stays on polling holds this frame for its pending GET, ~340 B per frame), with the first
        packet awaited under `asyncio.timeout` rather than `asyncio.wait_for`: on Python 3.11
        that made a task (its coroutine, its context) for every pending GET, 1 KB."""
        if self.polling:
            client = client_of(self)
            log.info("Closing %s: two polls at once", self.sid, extra=client)
            raise DuplicatePollError
        if self.upgrading or self.upgraded:
            # On the way to a WebSocket: no more packets through the polling endpoint.
            return [engineio_packet.Packet(engineio_packet.NOOP)]
        self.polling = True
        queue = self.queue
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                packets = [await queue.get()]
            queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            # As engine.io's: the session is closed, the GET answered 400.
            await self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise exceptions.QueueEmpty() from None
        finally:
            self.polling = False
        if packets == [None]:
            return []
        while True:
            try:
                pkt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        length = int(environ.get("CONTENT_LENGTH", "0"))
        if length > self.server.max_http_buffer_size:
            raise exceptions.ContentTooLongError
        body = await environ["wsgi.input"].read(length)
        try:
            packets = engineio_payload.Payload(encoded_payload=body.decode()).packets
        except DECODING as exc:
            client = client_of(self)
            log.info("Closing %s: invalid payload: %s", self.sid, str(exc)[:200], extra=client)
            raise InvalidPayloadError from exc
        for pkt in packets:
            await self.receive(pkt)
            if self.closed:
                break  # e.g. the client's CLOSE, or hung up on: the rest is not for anyone


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engine.io's server, except that disconnecting never waits for a client.

    engine.io's `disconnect()` queues a CLOSE packet and waits until the client fetches it:
    forever for a polling client that is not polling now. It runs on shutdown and on an
    oversized POST, whose request then hung for good. The CLOSE stays queued for a pending or
    next poll; nobody waits for it.
    """

    # Set by the app: every id made here names this instance (see instances.py).
    instance_id = ""
    # Set by install(): WebSockets run by server.websocket (True) or engine.io's own driver.
    lean_websockets = True
    # Set by SocketServer: the limits of one client.
    guard: Guard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hanging_up: set[asyncio.Task[None]] = set()
        # The polling sessions' pings (PollingSocket.schedule_ping), run by the service task.
        self.pings = PollingPings(self.ping_interval)

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        return PacketQueue(self.guard.outbound_bytes, self._overflowed)

    def _overflowed(self, queue: PacketQueue) -> None:
        """A poller's unread packets passed OUTBOUND_BUFFER_BYTES: hang up on it."""
        for sid, eio_socket in list(self.sockets.items()):
            if eio_socket.queue is queue:
                self.guard.metrics.refused("outbound_buffer_bytes")
                client = client_of(eio_socket)
                log.info("Closing %s: %d bytes of replies unread", sid, queue.limit, extra=client)
                task = asyncio.get_running_loop().create_task(self.hang_up(sid))
                self._hanging_up.add(task)
                task.add_done_callback(self._hanging_up.discard)
                return

    async def refuse(self, sid: str) -> None:
        """Hang up on a client now: its CLOSE goes out (after what was sent to it) before the
        disconnect's bookkeeping, which may wait for the client's events in flight."""
        eio_socket = self.sockets.pop(sid, None)
        if eio_socket is not None and not eio_socket.closing:
            eio_socket.queue.put_nowait(engineio_packet.Packet(engineio_packet.CLOSE))
            await eio_socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)

    async def hang_up(self, sid: str) -> None:
        """Close one session at once, without a CLOSE packet: its client is not listening."""
        eio_socket = self.sockets.pop(sid, None)
        if eio_socket is not None:
            await eio_socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
            eio_socket.queue.put_nowait(None)  # ends a pending poll (stock: its writer task)
            transport = getattr(eio_socket, "websocket_transport", None)
            if transport is not None:
                transport.abort()

    @_coroutine_function
    def handle_request(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        # Not a coroutine of its own: its frame would live as long as each WebSocket (~0.5 KB).
        # engine.io's own log lines of this request are the client's (see logs.py).
        request = args[0]
        trust_proxy = self.guard.trust_proxy
        logs.CLIENT.set(client_address(request.remote, request.headers, trust_proxy))
        if request.method != "OPTIONS" and not names_transport(request.query_string):
            # Engine.IO v4: `transport` is mandatory, "If a mandatory query parameter is
            # missing, then the server MUST respond with an HTTP 400 error status"; engine.io
            # takes polling for granted.
            environ = self._async["translate_request"](request)
            return self._make_response(self._bad_request("Missing transport"), environ)  # type: ignore[no-any-return]
        return super().handle_request(*args, **kwargs)  # type: ignore[no-any-return]

    def _method_not_found(self) -> dict[str, Any]:
        # The spec's test suite expects 400 for a method other than GET, POST (and OPTIONS,
        # CORS), as the Node server answers; engine.io answered 405.
        return self._bad_request("Method not supported")  # type: ignore[no-any-return]

    def generate_id(self) -> str:
        """engine.io's id (12 random bytes, then a sequence number, in URL-safe base64) after
        this instance's id; the random bytes from a block (server/randbytes.py)."""
        sequence: int = self.sequence_number  # type: ignore[has-type]
        raw = RANDOM.take(12) + sequence.to_bytes(3, "big")
        self.sequence_number = (sequence + 1) & 0xFFFFFF
        return f"{self.instance_id}{SEPARATOR}{base64.urlsafe_b64encode(raw).decode()}"

    async def _service_task(self) -> None:
        """engine.io's sweep of its sockets: forgets the closed ones and closes those whose
        client missed a ping for `ping_timeout` s, each looked at once per `ping_timeout`.

        engine.io's own sweep waits `ping_timeout / len(sockets)` between two sockets, each
        wait an `asyncio.wait_for` (a task and a timer): 250 wake-ups a second with 5,000
        clients, most of the CPU of idle connections. Here the sweep wakes once a second and
        looks at the sockets due (the same share of them), and not at all when there are none.
        """
        self.service_task_event = stop = self.create_event()
        pings = running_loop().create_task(self.pings.run())
        due: list[Any] = []
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=SWEEP_TICK)
                    return
                if not due:
                    due = list(self.sockets.values())
                share = math.ceil(len(due) * SWEEP_TICK / self.ping_timeout)
                batch, due = due[:share], due[share:]
                try:
                    await self._sweep(batch)
                except Exception:
                    log.exception("Sweeping the Engine.IO sockets failed")
        finally:
            pings.cancel()

    async def _sweep(self, sockets: list[Any]) -> None:
        deadline = time.time() - self.ping_timeout
        for eio_socket in sockets:
            if eio_socket.closed:
                if self.sockets.get(eio_socket.sid) is eio_socket:
                    del self.sockets[eio_socket.sid]
            elif not eio_socket.closing and (eio_socket.last_ping or deadline) < deadline:
                await eio_socket.check_ping_timeout()

    async def disconnect(self, sid: str | None = None) -> None:
        for key in [sid] if sid is not None else list(self.sockets):
            eio_socket = self.sockets.pop(key, None)
            if eio_socket is not None:
                await eio_socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)


def client_of(eio_socket: Any) -> dict[str, str]:
    """`extra=` naming the client of an Engine.IO socket, for the per-client log limit."""
    return {"client": getattr(eio_socket, "client", "unknown")}


class _OneLineParseErrors(logging.Filter):
    """engine.io logs a traceback for every unparseable polling payload or unknown packet type:
    any client could fill the log. One line is enough, limited per client (logs.py)."""

    NOISY = frozenset({"post request handler error", "Unknown receive error"})

    def filter(self, record: logging.LogRecord) -> bool:
        client = logs.CLIENT.get()
        if client is not None and not hasattr(record, "client"):
            record.client = client
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
    """Queue one event for this process's recipients: the packet encoded once, no task each,
    nothing encoded when none of them is here."""
    rooms = manager.rooms.get(namespace)
    if rooms is None:
        return  # nobody has connected to it yet
    if manager.watch is not None:  # a tracker is joining a session (presence.Joins)
        manager.watch(event, room, data)
    recipients = _participants(rooms, room)
    if skip_sid is not None and recipients:
        skip = skip_sid if isinstance(skip_sid, list) else (skip_sid,)
        recipients = [pair for pair in recipients if pair[0] not in skip]
    if not recipients:
        return
    if type(data) is tuple:
        message = [event, *data]
    else:
        message = [event] if data is None else [event, data]
    encoded = _encode(manager.server.packet_class, namespace, message)
    frames = encoded if isinstance(encoded, list) else [encoded]
    eio = manager.server.eio
    sockets = eio.sockets
    ws_frames: list[bytes] | None = None
    for _, eio_sid in recipients:
        eio_socket = sockets.get(eio_sid)
        queue = getattr(eio_socket, "queue", None)
        if type(queue) is websocket.Connection and _sendable(eio_socket, eio.ping_timeout):
            # What engine.io's send_packet would do, without its five calls: the frames,
            # made once for every recipient, go to the connection (an Engine.IO MESSAGE is
            # "4" and the text; a binary attachment goes as it is).
            if ws_frames is None:
                ws_frames = [websocket.frame("4" + f if isinstance(f, str) else f) for f in frames]
            for ws_frame in ws_frames:
                queue.send(ws_frame)
            continue
        for f in frames:
            await manager.server._send_eio_packet(
                eio_sid, engineio_packet.Packet(engineio_packet.MESSAGE, f)
            )


def _encode(packet_class: Any, namespace: str, message: list[Any]) -> str | list[Any]:
    """python-socketio's encoding of an EVENT packet. A message of strings, numbers and flat
    dicts of them (every event this server sends) is encoded without a packet object and its
    test for binary data: the same text."""
    if namespace == "/" and _plain(message):
        return "2" + packet_class.json.dumps(message, separators=(",", ":"))  # type: ignore[no-any-return]
    return packet_class(socketio_packet.EVENT, namespace=namespace, data=message).encode()  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _awaitable(handler: Callable[..., Any]) -> bool:
    """inspect.iscoroutinefunction, once per handler (two Python calls deep on 3.11)."""
    return inspect.iscoroutinefunction(handler)


def _plain(message: list[Any]) -> bool:
    """Whether a message holds only strings, numbers and flat dicts of them."""
    for item in message:
        if type(item) is dict:
            for value in item.values():
                if type(value) not in _SCALARS:
                    return False
        elif type(item) not in _SCALARS:
            return False
    return True


def _participants(rooms: dict[Any, Any], room: Any) -> list[tuple[str, str]]:
    """python-socketio's get_participants (sid, eio_sid pairs), without its generator and its
    copy of a dict for a single room (an emit to one socket is one room of one)."""
    if isinstance(room, str) or room is None:
        members = rooms.get(room)
        return list(members._fwdm.items()) if members is not None else []
    participants: dict[str, str] = {}
    for name in room:
        members = rooms.get(name)
        if members is not None:
            participants.update(members._fwdm)
    return list(participants.items())


def _sendable(eio_socket: Any, ping_timeout: float) -> bool:
    """Whether engine.io's AsyncSocket.send would just queue a packet: the socket is open and
    not past its ping timeout (else send closes it, or raises)."""
    last_ping = eio_socket.last_ping
    return not eio_socket.closed and not (last_ping and time.time() - last_ping > ping_timeout)


def names_transport(query: str) -> bool:
    """Whether a query names a `transport`, blank or not, as `"transport" in request.query`
    says, without aiohttp's MultiDict of the query: the request holds it, ~0.9 KB of a client
    that stays on polling for as long as its GET is pending (tracemalloc)."""
    return any(name == "transport" for name, _ in parse_qsl(query, keep_blank_values=True))


@functools.lru_cache(maxsize=64)
def query_transports(query: str) -> tuple[str, ...]:
    """The `transport` values of a session's first request's query. The apps send the same
    query every time, so it is parsed once (engine.io's parse_qs and ours were 3.5% of the
    server's CPU per WebSocket connect, 1.6% with ours cached)."""
    return tuple(parse_qs(query).get("transport", ()))


class DirectManager(IndexedRooms, socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager, without a task per recipient (and with each socket's rooms
    indexed: server.rooms).

    Its emit starts a task for each recipient and waits for them all, even for one socket;
    queueing a packet for a socket does not block, so plain awaits do the same for less
    (profiled: ~15% of the CPU of a check-in). Acks (callbacks) keep the original path.
    """

    watch: Callable[[str, Any, Any], None] | None = None  # see presence.Joins

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
    """An AsyncServer that decodes each packet itself, so that only a decoding failure counts
    as a malformed packet (answered with an `error` event, one info line), and that bounds
    what one client may make it hold: announced binary attachments, events in flight.

    python-socketio let decoding errors (and e.g. `42{}`, an event that is not a list) escape
    to engine.io, which logs a traceback per packet; and it buffered every binary frame that a
    packet announced (`45999999999-[...]`: 200 MB in 5.5 s), and started a task per event
    however many were running (100,000 checkIn: 23,831 tasks at once).
    """

    def __init__(self, *args: Any, guard: Guard | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", Packet)
        super().__init__(*args, **kwargs)
        if guard is None:
            from .metrics import Metrics  # not at the top: metrics -> relay -> transport

            guard = Guard(Settings(), Metrics())
        self.guard = guard
        self.eio.guard = self.guard
        self._binary_strikes: dict[str, int] = {}
        self._event_tasks: set[asyncio.Task[Any]] = set()

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: Any = None,
        room: Any = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Any = None,
        ignore_queue: bool = False,
    ) -> None:
        """python-socketio's emit, without its info line per emit (its logger is off): the
        manager's emit is called as it calls it."""
        await self.manager.emit(
            event,
            data,
            namespace or "/",
            room=to or room,
            skip_sid=skip_sid,
            callback=callback,
            ignore_queue=ignore_queue,
        )

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, bytes | bytearray):
            if eio_sid in self._binary_packet:  # announced, and within ATTACHMENTS_PER_PACKET
                await super()._handle_eio_message(eio_sid, data)
            else:
                await self._unexpected_binary(eio_sid)
            return
        if not isinstance(data, str):
            # engine.io decodes a text message that is whole JSON (e.g. "4[[...]]"): not a
            # Socket.IO packet, and not binary either.
            await self._malformed(eio_sid, ValueError("not a Socket.IO packet"))
            return
        try:
            pkt = self._decode(eio_sid, data)
        except DECODING as exc:
            await self._malformed(eio_sid, exc)
            return
        try:
            await self._dispatch(eio_sid, pkt)
        except Exception:
            # A bug of ours (a connect handler, the manager), not the client's packet.
            self.guard.metrics.error("packet")
            log.exception("Handling a packet from %s failed", eio_sid)

    def _decode(self, eio_sid: str, data: str) -> Any:
        """The Socket.IO packet in `data`; raises what DECODING names when it is not one."""
        pkt = self.packet_class(encoded_packet=data)
        kind = pkt.packet_type
        if kind not in KNOWN_TYPES:
            raise ValueError(f"unexpected packet type {kind!r}")
        if kind in (socketio_packet.EVENT, socketio_packet.BINARY_EVENT):
            event = pkt.data
            if not isinstance(event, list) or not event or not isinstance(event[0], str):
                raise ValueError("an event is a list that starts with its name")
        if kind in BINARY_TYPES:
            if pkt.attachment_count < 1:
                raise ValueError("a binary packet without attachments")
            if not self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/"):
                raise ValueError("a binary packet before CONNECT")
        return pkt

    async def _dispatch(self, eio_sid: str, pkt: Any) -> None:
        """python-socketio's dispatch of a decoded packet."""
        kind = pkt.packet_type
        if kind == socketio_packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif kind == socketio_packet.DISCONNECT:
            reason = self.reason.CLIENT_DISCONNECT
            await self._handle_disconnect(eio_sid, pkt.namespace, reason)
        elif kind == socketio_packet.EVENT:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif kind == socketio_packet.ACK:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif pkt.attachment_count > self.guard.attachments:
            await self._refuse_attachments(eio_sid, pkt.attachment_count)
        else:
            self._binary_packet[eio_sid] = pkt

    async def _malformed(self, eio_sid: str, exc: BaseException) -> None:
        client = client_of(self.eio.sockets.get(eio_sid))
        log.info("Malformed packet from %s dropped: %s", eio_sid, str(exc)[:200], extra=client)
        await self._tell(eio_sid, errors.MALFORMED_PACKET)

    async def _tell(self, eio_sid: str, message: str) -> None:
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None:
            await self.emit("error", message, to=sid)

    async def _refuse_attachments(self, eio_sid: str, announced: int) -> None:
        """Refused before anything is buffered; the frames it announced are dropped as they
        come, and a client that keeps sending them is hung up on."""
        self.guard.metrics.refused("attachments_per_packet")
        client = client_of(self.eio.sockets.get(eio_sid))
        log.info("%s announced %d binary attachments: refused", eio_sid, announced, extra=client)
        await self._tell(eio_sid, errors.ATTACHMENTS_REFUSED)

    async def _unexpected_binary(self, eio_sid: str) -> None:
        if eio_sid not in self.eio.sockets:
            return
        strikes = self._binary_strikes.get(eio_sid, 0) + 1
        self._binary_strikes[eio_sid] = strikes
        if strikes == BINARY_STRIKES + 1:
            self.guard.metrics.refused("attachments_per_packet")
            client = client_of(self.eio.sockets.get(eio_sid))
            log.info("Closing %s: binary frames nobody asked for", eio_sid, extra=client)
            await self.eio.refuse(eio_sid)

    async def _handle_event(self, eio_sid: str, namespace: Any, id: Any, data: Any) -> None:
        """python-socketio's, with the socket's events in flight bounded: at the limit the
        connection's reader waits here (WebSocket: TCP pushes back; polling: the POST is held),
        and a client that insists is told so and hung up on."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            return
        guard = self.guard
        if guard.at_limit(sid) and not await guard.admit_event(sid):
            if self.manager.is_connected(sid, namespace):  # else refused already
                await self._too_many_events(eio_sid, sid)
            return
        if not self.manager.is_connected(sid, namespace) or not guard.begin(sid):
            return  # its disconnect began meanwhile: nothing new starts for it
        self._start_event(sid, eio_sid, data, namespace, id)

    def _start_event(self, sid: str, eio_sid: str, data: Any, namespace: str, id: Any) -> None:
        task = running_loop().create_task(self._run_event(sid, eio_sid, data, namespace, id))
        self._event_tasks.add(task)
        task.add_done_callback(functools.partial(self._event_done, sid))

    def event_now(self, eio_sid: str, data: Any) -> bool:
        """Start the handling of an event message at once, without a task or a coroutine to
        get there, when nothing about it needs to wait: a well-formed EVENT of a connected
        socket below its limit of events in flight. False, with nothing done, for any other
        message: it goes the usual way (_handle_eio_message), which says what is wrong."""
        if type(data) is not str or not data.startswith("2"):
            return False
        try:
            pkt = self._decode(eio_sid, data)
        except DECODING:
            return False
        if pkt.packet_type != socketio_packet.EVENT:
            return False
        namespace = pkt.namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if (
            not self.manager.is_connected(sid, namespace)
            or self.guard.at_limit(sid)
            or not self.guard.begin(sid)
        ):
            return False
        self._start_event(sid, eio_sid, pkt.data, namespace, pkt.id)
        return True

    def _event_done(self, sid: str, task: asyncio.Task[Any]) -> None:
        self._event_tasks.discard(task)
        self.guard.end(sid)

    async def _run_event(self, sid: str, eio_sid: str, data: Any, namespace: str, id: Any) -> None:
        EVENT_OF.set(sid)  # in this task's own context
        handler = self.handlers.get(namespace, {}).get(data[0]) if id is None else None
        if handler is not None and data[0] not in self.reserved_events and _awaitable(handler):
            # An event without an ack, for a coroutine handler of its own name: called as
            # python-socketio's _handle_event_internal and _trigger_event call it (a handler's
            # return value only matters for an ack), without their three calls.
            with contextlib.suppress(asyncio.CancelledError):
                await handler(sid, *data[1:])
            return
        await self._handle_event_internal(self, sid, eio_sid, data, namespace, id)

    async def _too_many_events(self, eio_sid: str, sid: str) -> None:
        self.guard.metrics.refused("events_in_flight_per_connection")
        client = client_of(self.eio.sockets.get(eio_sid))
        log.info("Closing %s: too many events in flight", sid, extra=client)
        await self.emit("error", errors.TOO_MANY_EVENTS, to=sid)
        await self.eio.refuse(eio_sid)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        eio_socket = self.eio.sockets[eio_sid]
        request = environ["aiohttp.request"]
        eio_socket.client = client_address(request.remote, request.headers, self.guard.trust_proxy)
        # Called before engine.io schedules the first ping: one that starts on WebSocket is
        # pinged by server.websocket's heartbeat instead of a task of its own.
        transports = query_transports(environ.get("QUERY_STRING", ""))
        if self.eio.lean_websockets and transports == ("websocket",):
            websocket.adopt(eio_socket)
        # engine.io makes its sockets itself, with no hook for the class: this is the first
        # moment the socket is seen, before its client knows its sid.
        eio_socket.__class__ = PollingSocket
        await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        # After a client's own CLOSE, engine.io leaves that client's pending long-poll waiting
        # for the ping timeout (45 s): a request and a task held for nothing, and a shutdown
        # that waits for them. Nothing more will be sent to it (no CLOSE packet follows), so
        # end the poll now, with a NOOP as the spec's test suite expects (Node does the same).
        self._binary_strikes.pop(eio_sid, None)
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is not None and reason == self.eio.reason.CLIENT_DISCONNECT:
            noop = None if eio_socket.upgraded else engineio_packet.Packet(engineio_packet.NOOP)
            eio_socket.queue.put_nowait(noop)
        await super()._handle_eio_disconnect(eio_sid, reason)


class WebSockets:
    """The open WebSocket responses of one server, and the heartbeat that pings them."""

    def __init__(self, heartbeat: websocket.Heartbeat, guard: Guard) -> None:
        # A plain set, emptied by each handler as it ends (a WeakSet adds a weakref each).
        # server.websocket's EngineWebSocket, or aiohttp's WebSocketResponse (stock driver).
        self._open: set[Any] = set()
        self.heartbeat = heartbeat
        self.guard = guard

    def __len__(self) -> int:
        return len(self._open)

    def driver(self) -> type[Any]:
        """engine.io's WebSocket driver for aiohttp, as engine.io uses it (`driver(handler,
        server)`, then `await driver(environ)`), running the connection with server.websocket
        instead of engine.io's tasks, and registering it here."""
        registry = self._open
        heartbeat = self.heartbeat
        guard = self.guard

        class WebSocket:
            __slots__ = ("server", "socket")  # lives as long as the connection

            def __init__(self, handler: Any, server: Any) -> None:
                self.socket = handler.__self__  # engine.io's socket
                self.server = server

            def __call__(self, environ: dict[str, Any]) -> Awaitable[web.StreamResponse]:
                # A coroutine, not an async def of its own: one coroutine fewer per connection.
                max_size = self.server.max_http_buffer_size
                return websocket.serve(
                    self.socket, environ, max_size, heartbeat, registry, guard.outbound_bytes
                )

        return WebSocket

    def stock_driver(self) -> type[Any]:
        """engine.io's own WebSocket driver for aiohttp (WEBSOCKET_DRIVER=stock, the way back
        if an upgrade of engine.io breaks server.websocket): its writer task, reader loop and
        ping task per connection, with three changes. Compression is off (PLATFORM.md); the
        WebSocket is registered here, so that a shutdown closes it; and a frame that is not
        an Engine.IO packet ends the connection (engine.io's reader raised out of the handler,
        a traceback per frame)."""
        registry = self._open

        class StockWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
            async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
                request = environ["aiohttp.request"]
                max_size = self.server.max_http_buffer_size
                self._sock = ws = web.WebSocketResponse(max_msg_size=max_size, compress=False)
                await ws.prepare(request)
                self.environ = environ
                socket = self.handler.__self__
                socket.websocket_transport = request.transport
                registry.add(ws)
                try:
                    await self.handler(self)
                finally:
                    registry.discard(ws)
                    socket.websocket_transport = None
                return ws

            async def wait(self) -> str | bytes:
                max_size = self.server.max_http_buffer_size
                data = websocket.packet_data(await self._sock.receive(), max_size)
                if data is None:
                    raise OSError("closed, too large or not an Engine.IO packet")
                return data

        return StockWebSocket

    async def close_all(self) -> None:
        """Close every WebSocket now (Engine.IO's CLOSE packet alone does not make a WebSocket
        client hang up, and the server side would wait for the next ping timeout); what was
        sent to them goes first."""
        self.heartbeat.outbox.flush()
        sockets = list(self._open)
        if sockets:
            await asyncio.gather(
                *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sockets),
                return_exceptions=True,
            )


def install(
    sio: Any, heartbeat: websocket.Heartbeat | None = None, *, driver: str = "lean"
) -> WebSockets:
    """Use the registering WebSocket class for this server only (the driver table is shared);
    its heartbeat must run for the app's lifetime. `driver`: "lean" (server.websocket) or
    "stock" (engine.io's own, see WebSockets.stock_driver)."""
    if heartbeat is None:
        heartbeat = websocket.Heartbeat(sio.eio.ping_interval, sio.eio.ping_timeout)
    websockets = WebSockets(heartbeat, sio.guard)
    lean = driver == "lean"
    sio.eio.lean_websockets = lean
    websocket_class = websockets.driver() if lean else websockets.stock_driver()
    sio.eio._async = {**sio.eio._async, "websocket": websocket_class}
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
