"""What one client may hold of this server: events in flight per connection, connections per
address, time to send its request headers. Past a limit the client is refused or hung up on,
and counted; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web

from .limits import client_address
from .settings import Settings

if TYPE_CHECKING:  # metrics imports the relay, which imports transport, which imports this
    from .metrics import Metrics

log = logging.getLogger(__name__)

# A message read while its connection is at its events-in-flight limit waits this long for a
# slot; a client still at the limit then, or sending more meanwhile, is hung up on.
HOLD_SECONDS: Final = 3.0
# A disconnect waits this long for the events of its socket still in flight, so that none of
# them binds the departed socket after its bookkeeping ran.
SETTLE_SECONDS: Final = 5.0
# A TCP connection that has not sent complete request headers by then is closed.
HEADERS_SECONDS: Final = 5.0
# Binary frames that no packet announced, dropped, before the connection is closed.
BINARY_STRIKES: Final = 3

# The socket whose event the current task handles (set by server.transport in each event's
# task): a handler that disconnects its own socket must not wait for itself.
EVENT_OF: ContextVar[str | None] = ContextVar("event_of", default=None)


class _Flight:
    """The events of one socket being handled now, and who waits for that number to drop."""

    __slots__ = ("count", "holding", "waiters")

    def __init__(self) -> None:
        self.count = 0
        self.holding = False  # a message of this socket is held, waiting for a slot
        self.waiters: list[asyncio.Future[None]] = []


class Guard:
    """Per-connection and per-address accounting of one server."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.events_in_flight = settings.events_in_flight_per_connection
        self.outbound_bytes = settings.outbound_buffer_bytes
        self.attachments = settings.attachments_per_packet
        self.connections_per_address = settings.connections_per_address
        self.trust_proxy = settings.trust_proxy
        self._flights: dict[str, _Flight] = {}
        self._leaving: set[str] = set()
        self._sessions: dict[str, int] = {}  # Socket.IO connections per client address
        self._session_address: dict[str, str] = {}
        self._tcp: dict[str, int] = {}  # TCP connections per peer address

    # --- events in flight, per socket --------------------------------------------------------

    def in_flight(self, sid: str) -> int:
        flight = self._flights.get(sid)
        return 0 if flight is None else flight.count

    def begin(self, sid: str) -> bool:
        """An event of `sid` starts; False once the socket's disconnect began (drop it)."""
        if sid in self._leaving:
            return False
        flight = self._flights.get(sid)
        if flight is None:
            flight = self._flights[sid] = _Flight()
        flight.count += 1
        return True

    def end(self, sid: str) -> None:
        flight = self._flights.get(sid)
        if flight is None:
            return
        flight.count -= 1
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if flight.count <= 0 and not flight.holding and not flight.waiters:
            del self._flights[sid]

    async def _wait(self, sid: str, below: int, within: float) -> bool:
        """Wait (at most `within` s) until fewer than `below` events of `sid` are in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (flight := self._flights.get(sid)) is not None and flight.count >= below:
            left = deadline - loop.time()
            if left <= 0:
                return False
            waiter = loop.create_future()
            flight.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return False
            finally:
                if waiter in flight.waiters:
                    flight.waiters.remove(waiter)
        return True

    def at_limit(self, sid: str) -> bool:
        """Whether an event of `sid` must go through admit_event (else it is admitted)."""
        flight = self._flights.get(sid)
        return flight is not None and flight.count >= self.events_in_flight

    async def admit_event(self, sid: str) -> bool:
        """Before an event of `sid` is read further: wait for a slot while the socket is at its
        limit. False when it insists (a second message held at once, or no slot within
        HOLD_SECONDS): refuse it. Awaited by the connection's reader, so TCP pushes back."""
        flight = self._flights.get(sid)
        if flight is None or flight.count < self.events_in_flight:
            return True
        if flight.holding:
            return False
        flight.holding = True
        try:
            return await self._wait(sid, self.events_in_flight, HOLD_SECONDS)
        finally:
            flight.holding = False
            if flight.count <= 0 and not flight.waiters:
                self._flights.pop(sid, None)

    async def settle(self, sid: str, within: float = SETTLE_SECONDS) -> bool:
        """`sid`'s disconnect began: no new event of it starts, and this waits (at most
        `within` s) for the ones in flight. False if some are still running."""
        self._leaving.add(sid)
        itself = 1 if EVENT_OF.get() == sid else 0
        return await self._wait(sid, 1 + itself, within)

    async def settled(self, sid: str) -> None:
        """Wait, however long it takes, for the last event of a departed socket."""
        await self._wait(sid, 1, float("inf"))

    def forget(self, sid: str) -> None:
        """`sid`'s disconnect is over."""
        self._leaving.discard(sid)
        address = self._session_address.pop(sid, None)
        if address is not None:
            self._release(self._sessions, address)

    # --- connections per address -------------------------------------------------------------

    def open_session(self, sid: str, address: str) -> bool:
        """A Socket.IO connection from `address`; False (refuse it) past the limit."""
        if not self._take(self._sessions, address):
            return False
        self._session_address[sid] = address
        return True

    def open_tcp(self, address: str) -> bool:
        """A TCP connection accepted from `address`; False (close it) past the limit."""
        return self._take(self._tcp, address)

    def close_tcp(self, address: str) -> None:
        self._release(self._tcp, address)

    def _take(self, counts: dict[str, int], address: str) -> bool:
        held = counts.get(address, 0)
        if held >= self.connections_per_address:
            self.metrics.refused("connections_per_address")
            return False
        counts[address] = held + 1
        return True

    @staticmethod
    def _release(counts: dict[str, int], address: str) -> None:
        held = counts.get(address, 0) - 1
        if held > 0:
            counts[address] = held
        else:
            counts.pop(address, None)

    def listener(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """aiohttp's protocol factory, with connections counted per address at accept (unless
        every connection comes from our proxy) and a deadline for the request headers."""
        count = not self.trust_proxy

        def make() -> asyncio.Protocol:
            return _Guarded(factory, self, count)

        return make


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one TCP connection, wrapped: refused past the per-address limit,
    closed if its first request headers are not complete within HEADERS_SECONDS (aiohttp has no
    header timeout: 1,008 half-sent requests held every file descriptor of a 1,024 limit)."""

    __slots__ = (
        "_address",
        "_count",
        "_factory",
        "_guard",
        "_inner",
        "_tail",
        "_timer",
        "_transport",
    )

    def __init__(self, factory: Callable[[], asyncio.Protocol], guard: Guard, count: bool) -> None:
        self._factory = factory
        self._inner: asyncio.Protocol | None = None  # made once the connection is admitted
        self._guard = guard
        self._count = count
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._tail = b""  # the end of what came so far, until the headers are complete

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's are not asyncio's subclasses
        if self._count:
            peer = transport.get_extra_info("peername")
            address = client_address(peer[0] if peer else None, {}, trust_proxy=False)
            if not self._guard.open_tcp(address):
                transport.abort()
                return
            self._address = address
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEADERS_SECONDS, self._too_slow)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._guard.metrics.refused("request_headers_seconds")
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        """The connection speaks `protocol` from now on (a WebSocket after its handshake,
        taken from aiohttp): still counted against its address until it is lost."""
        self._inner = protocol  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._address is not None:
            self._guard.close_tcp(self._address)
            self._address = None
        if self._inner is not None:
            self._transport = None
            self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


GUARD: Final = web.AppKey("guard", Guard)
