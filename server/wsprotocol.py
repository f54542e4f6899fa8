"""The server side of an open WebSocket (RFC 6455) as a plain asyncio.Protocol, and the taking
of a WebSocket's connection from aiohttp once its handshake is answered.

aiohttp runs a WebSocket with its request, parser, response, reader, writer and the task of its
connection loop, all alive as long as the connection (~12 KB of one idle connection). Instead,
`accept` answers the handshake, `detach` hands the transport to a subclass of
WebSocketProtocol (server.websocket's EngineWebSocket), and the handler returns `Detached`:
aiohttp's request ends, and nothing of aiohttp's stays. One object per connection, and nothing
else while it is idle.

Frames are read as aiohttp read them, and the same frames are refused with the same close
codes: reserved bits, unknown opcodes, fragmented or long control frames, a continuation out of
place (1002), text that is not UTF-8 (1007), a message over `max_size` bytes (1009). Unlike
aiohttp, an unmasked client frame is refused too (1002), as RFC 6455 5.1 requires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from typing import Final

# aiohttp's (its C implementation when built): XOR a payload with its mask, in place.
from aiohttp import web
from aiohttp._websocket.helpers import websocket_mask
from aiohttp.http_websocket import WS_KEY

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OK, GOING_AWAY, PROTOCOL_ERROR, INVALID_TEXT, MESSAGE_TOO_BIG = 1000, 1001, 1002, 1007, 1009
# The close codes a peer may send below 3000 (RFC 6455 7.4.1, and aiohttp's list).
ALLOWED_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
CLOSE_TIMEOUT: Final = 10.0  # for the peer's close frame after ours, as aiohttp's
# Our bytes a client may leave unread before a ping of its is taken as abuse (aiohttp's writer
# made its reader wait instead): pings without reading the pongs would grow the buffer for ever.
UNREAD_BYTES_FOR_PING: Final = 1 << 20


class FrameError(Exception):
    """A frame the peer must not send: the connection is closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def unmask(mask: bytes | bytearray, payload: bytes | bytearray) -> bytearray:
    data = bytearray(payload)
    websocket_mask(bytes(mask), data)
    return data


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


def close_frame(code: int) -> bytes:
    return control_frame(CLOSE, struct.pack("!H", code))


class WebSocketProtocol(asyncio.Protocol):
    """Reads the frames of one client; a subclass gets its messages (`message`, a str or
    bytes) and a last call (`ended`) when the connection is over, or closing.

    Closing: `end(code)` sends a close frame; the TCP connection is closed when the peer's
    close frame comes, or after CLOSE_TIMEOUT. A close frame of the peer's is answered (1000,
    as aiohttp did) and the connection closed at once; a bad frame is answered with its code
    and the connection closed at once (RFC 6455 7.1.7, "fail the connection").
    """

    __slots__ = (
        "_buffer",
        "_closer",
        "_opcode",
        "_parts",
        "_size",
        "_waiter",
        "closed",
        "max_size",
        "transport",
    )

    def __init__(self, transport: asyncio.Transport, max_size: int) -> None:
        self.transport = transport
        self.max_size = max_size
        self.closed = False  # our close frame is sent, or the connection is gone
        self._buffer: bytearray | None = None  # the start of a frame, read so far
        self._parts: list[bytearray] | None = None  # a fragmented message, so far
        self._opcode = 0  # its opcode
        self._size = 0  # its size
        self._closer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- what a subclass does --------------------------------------------------------------

    def message(self, data: str | bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def ended(self) -> None:  # pragma: no cover
        """Called once: the connection is closing or closed; no message follows."""

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer is not None:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        try:
            used = self._frames(view)
        except FrameError as exc:
            self._buffer = None
            self.fail(exc.code)
            return
        if used == len(view):
            self._buffer = None
        elif buffer is not None:
            del buffer[:used]
        else:
            self._buffer = bytearray(view[used:])

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._buffer = self._parts = None
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.ended()

    # --- frames ----------------------------------------------------------------------------

    def _frames(self, data: bytes | bytearray) -> int:
        """Handle the whole frames at the start of `data`; how many bytes they took."""
        pos, size = 0, len(data)
        while size - pos >= 6 and not self.transport.is_closing():
            first, second = data[pos], data[pos + 1]
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "Received frame with non-zero reserved bits")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "Received unmasked frame from a client")
            opcode, length = first & 0x0F, second & 0x7F
            head = pos + 2
            if length == 126:
                length = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif length == 127:
                if size - pos < 14:
                    break
                length = int.from_bytes(data[head : head + 8], "big")
                head += 8
            if opcode > 0x7:
                if opcode not in (CLOSE, PING, PONG):
                    raise FrameError(PROTOCOL_ERROR, f"Unexpected opcode={opcode!r}")
                if not first & 0x80:
                    raise FrameError(PROTOCOL_ERROR, "Received fragmented control frame")
                if length > 125:
                    raise FrameError(
                        PROTOCOL_ERROR, "Control frame payload cannot be larger than 125 bytes"
                    )
            elif opcode > BINARY:
                raise FrameError(PROTOCOL_ERROR, f"Unexpected opcode={opcode!r}")
            elif self._size + length > self.max_size:
                raise FrameError(MESSAGE_TOO_BIG, f"Message size exceeds limit {self.max_size}")
            end = head + 4 + length
            if end > size:
                break
            if length == 1 and first == 0x81 and self._parts is None and not self.closed:
                # One byte of text, e.g. an Engine.IO pong: no copy.
                byte = data[head + 4] ^ data[head]
                pos = end
                if byte < 0x80:
                    self.message(chr(byte))
                    continue
                raise FrameError(INVALID_TEXT, "Invalid UTF-8 text message")
            payload = unmask(data[head : head + 4], data[head + 4 : end])
            pos = end
            if opcode > 0x7:
                self._control(opcode, payload)
            else:
                self._data(first & 0x80, opcode, payload)
        return pos

    def _data(self, fin: int, opcode: int, payload: bytearray) -> None:
        whole: bytes | bytearray
        parts = self._parts
        if opcode == CONTINUATION:
            if parts is None:
                raise FrameError(PROTOCOL_ERROR, "Continuation frame for non started message")
            parts.append(payload)
            self._size += len(payload)
            if not fin:
                return
            opcode, whole = self._opcode, b"".join(parts)
            self._parts, self._size = None, 0
        elif parts is not None:
            raise FrameError(
                PROTOCOL_ERROR,
                f"The opcode in non-fin frame is expected to be zero, got {opcode!r}",
            )
        elif not fin:
            self._parts, self._opcode, self._size = [payload], opcode, len(payload)
            return
        else:
            whole = payload
        if self.closed:
            return  # closing: only the peer's close frame matters now
        if opcode == TEXT:
            try:
                text = whole.decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(INVALID_TEXT, "Invalid UTF-8 text message") from None
            self.message(text)
        else:
            self.message(bytes(whole))

    def _control(self, opcode: int, payload: bytearray) -> None:
        if opcode == PING:
            if self.closed:
                return
            if self.transport.get_write_buffer_size() > UNREAD_BYTES_FOR_PING:
                self.transport.abort()  # connection_lost follows, and ends the rest
                return
            self.transport.write(control_frame(PONG, bytes(payload)))
        elif opcode == CLOSE:
            if len(payload) >= 2:
                code = int.from_bytes(payload[:2], "big")
                if code < 3000 and code not in ALLOWED_CLOSE_CODES:
                    raise FrameError(PROTOCOL_ERROR, f"Invalid close code: {code}")
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError(INVALID_TEXT, "Invalid UTF-8 text message") from None
            elif payload:
                raise FrameError(PROTOCOL_ERROR, "Invalid close frame")
            if not self.closed:
                self._send_close(OK)
            self.transport.close()
            self._ended()
        # a pong: nothing to do

    # --- closing ---------------------------------------------------------------------------

    def _send_close(self, code: int) -> None:
        self.closed = True
        if not self.transport.is_closing():
            self.transport.write(close_frame(code))

    def _ended(self) -> None:
        self._parts = None
        self.ended()

    def fail(self, code: int) -> None:
        """Close at once with `code`, without waiting for the peer's close frame."""
        if not self.closed:
            self._send_close(code)
        self.transport.close()
        self._ended()

    def end(self, code: int = OK) -> None:
        """Start the closing handshake: the peer has CLOSE_TIMEOUT seconds to answer."""
        if self.closed:
            return
        self._send_close(code)
        if not self.transport.is_closing():
            loop = asyncio.get_running_loop()
            self._closer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        self._ended()

    async def close(self, code: int = OK) -> bool:
        """`end(code)`, then wait until the connection is closed (aiohttp's close())."""
        first = not self.closed
        self.end(code)
        if not self.transport.is_closing() or self._closer is not None:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return first


# --- taking a WebSocket from aiohttp ----------------------------------------------------------


def accept(request: web.BaseRequest) -> bytes:
    """The 101 answer to a valid WebSocket handshake (aiohttp's answer without
    permessage-deflate or a subprotocol); raises HTTPBadRequest otherwise.

    The checks are aiohttp's (WebSocketResponse._handshake), made here without building the
    response that can_prepare() builds and drops (a CIMultiDict of answer headers, the key's
    digest computed twice): 3.6% of the server's CPU per WebSocket connect (py-spy).
    """
    headers = request.headers
    key = headers.get("Sec-WebSocket-Key", "")
    if (
        headers.get("Upgrade", "").lower().strip() != "websocket"
        or not request._message.upgrade  # the parser's: Connection names upgrade
        or headers.get("Sec-WebSocket-Version", "") not in ("13", "8", "7")
        or not _nonce(key)
    ):
        raise web.HTTPBadRequest(text="Invalid WebSocket handshake")
    digest = base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest())  # RFC 6455 4.2.2
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: " + digest + b"\r\n\r\n"
    )


def _nonce(key: str) -> bool:
    """A Sec-WebSocket-Key is 16 bytes in base64 (as aiohttp decodes it; a key that is not
    ASCII is refused too, where aiohttp's check raised)."""
    try:
        return len(base64.b64decode(key)) == 16
    except ValueError:  # binascii.Error, or not ASCII
        return False


class Detached(web.StreamResponse):
    """What aiohttp's handler returns for a WebSocket taken out of aiohttp: the 101 was sent,
    and the connection is no longer aiohttp's to end (see serve)."""

    def __init__(self) -> None:
        super().__init__(status=101)

    @property
    def keep_alive(self) -> bool:
        return False  # aiohttp's connection loop ends

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def detach(request: web.BaseRequest, protocol: asyncio.BaseProtocol) -> bytes:
    """Take the connection of `request` from aiohttp and give it to `protocol`; what the
    client sent after its handshake is returned, for `protocol` to read.

    aiohttp's RequestHandler ends a connection after a response that is not keep-alive by
    closing its transport, unless it no longer has one; it lets go of it when its transport
    reports the connection lost (no more: the transport reports to `protocol`), so its
    server's table of connections is told here. Its keep-alive timer goes too.
    """
    handler = request.protocol
    transport = request.transport
    assert transport is not None
    tail: bytes = getattr(handler, "_message_tail", b"") or b""
    handler.keep_alive(False)
    handler.transport = None
    # Its request parser names it back: left so, every connection's handler, parser and
    # request headers (~20 objects) waited for the cyclic collector, whose pauses (15 ms each,
    # five while pairing 2,500 pairs) held up every client. aiohttp drops it at connection_lost.
    handler._parser = None
    manager = getattr(handler, "_manager", None)
    if manager is not None:
        manager.connection_lost(handler, None)
    # Our guard's wrapper around aiohttp's protocol (guard.py) counts the connection against
    # its address until it is lost: it stays, and passes everything on to `protocol`.
    wrapper = transport.get_protocol()
    if wrapper is not handler and hasattr(wrapper, "hand_over"):
        wrapper.hand_over(protocol)
    else:
        transport.set_protocol(protocol)
    return tail
