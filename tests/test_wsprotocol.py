"""The WebSocket frames of a client, read without aiohttp (server.wsprotocol), and the
connections that aiohttp lets go of once their handshake is answered (server.websocket)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_protocol import RequestHandler

from server import transport, wsprotocol
from server.websocket import EngineWebSocket, Heartbeat
from server.wsprotocol import WebSocketProtocol


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A frame as a client sends it (RFC 6455 5.2): masked, unless told otherwise."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(data: str, **kwargs: bool) -> bytes:
    return client_frame(wsprotocol.TEXT, data.encode(), **kwargs)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = self.aborted = self.paused = False
        self.read = 0  # of the written bytes, those the client has read

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written)) - self.read

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Recorder(WebSocketProtocol):
    __slots__ = ("ends", "messages")

    def __init__(self, transport: FakeTransport, max_size: int = 1000) -> None:
        super().__init__(transport, max_size)  # type: ignore[arg-type]
        self.messages: list[str | bytes] = []
        self.ends = 0

    def message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def ended(self) -> None:
        self.ends += 1


def reader(max_size: int = 1000) -> tuple[Recorder, FakeTransport]:
    tr = FakeTransport()
    return Recorder(tr, max_size), tr


def closed_with(tr: FakeTransport, code: int) -> bool:
    return tr.closed and tr.written[-1] == wsprotocol.close_frame(code)


def test_text_and_binary_messages_are_read_and_unmasked() -> None:
    ws, tr = reader()
    ws.data_received(text("3") + text("4hello") + client_frame(wsprotocol.BINARY, b"\x00\xff"))
    ws.data_received(text("42é"))
    assert ws.messages == ["3", "4hello", b"\x00\xff", "42é"]
    assert not tr.closed and tr.written == []


def test_a_frame_split_across_reads_is_read_once_whole() -> None:
    ws, tr = reader(100_000)
    data = text("4" + "x" * 300) + text("3") + text("4" + "y" * 70_000)
    for i in range(0, len(data), 7):
        ws.data_received(data[i : i + 7])
    assert ws.messages == ["4" + "x" * 300, "3", "4" + "y" * 70_000]
    assert not tr.closed


def test_a_fragmented_message_is_assembled_with_control_frames_in_between() -> None:
    ws, tr = reader()
    ws.data_received(text("4ab", fin=False))
    ws.data_received(client_frame(wsprotocol.PING, b"hi"))
    ws.data_received(client_frame(wsprotocol.CONTINUATION, b"cd", fin=False))
    ws.data_received(client_frame(wsprotocol.PONG, b""))
    assert ws.messages == []
    ws.data_received(client_frame(wsprotocol.CONTINUATION, "é".encode()))
    assert ws.messages == ["4abcdé"]
    assert tr.written == [wsprotocol.control_frame(wsprotocol.PONG, b"hi")]
    # The next message starts afresh.
    ws.data_received(text("3"))
    assert ws.messages == ["4abcdé", "3"]


@pytest.mark.parametrize(
    "data",
    [
        text("4" + "x" * 1000),  # one byte over
        text("4" + "x" * 600, fin=False) + client_frame(wsprotocol.CONTINUATION, b"x" * 400),
    ],
    ids=["one frame", "fragments"],
)
def test_a_message_over_the_limit_is_refused_with_1009_before_it_is_read(data: bytes) -> None:
    ws, tr = reader(1000)
    ws.data_received(data[:20])  # its header tells: not buffered up to its end
    ws.data_received(data[20:])
    assert ws.messages == []
    assert closed_with(tr, 1009) and ws.ends == 1


def test_a_message_at_the_limit_is_read() -> None:
    ws, tr = reader(1000)
    ws.data_received(text("4" + "x" * 999))
    assert len(ws.messages[0]) == 1000 and not tr.closed


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (text("4hello", masked=False), 1002),
        (text("4hello", rsv=0x40), 1002),
        (client_frame(0x3, b"x"), 1002),  # reserved data opcode
        (client_frame(0xB, b"x"), 1002),  # reserved control opcode
        (client_frame(wsprotocol.PING, b"x", fin=False), 1002),
        (client_frame(wsprotocol.PING, b"x" * 126), 1002),
        (client_frame(wsprotocol.CONTINUATION, b"x"), 1002),
        (text("4a", fin=False) + text("4b"), 1002),  # a new message inside a fragmented one
        (client_frame(wsprotocol.TEXT, b"4\xff\xfe"), 1007),
        (client_frame(wsprotocol.TEXT, b"\xc3"), 1007),  # one byte, not UTF-8
        (client_frame(wsprotocol.CLOSE, b"\x03"), 1002),
        (client_frame(wsprotocol.CLOSE, struct.pack("!H", 1005)), 1002),
        (client_frame(wsprotocol.CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1002),  # garbage
    ],
    # Named, not shown: the frames' masks are random, and pytest-xdist's workers must collect
    # the same test ids.
    ids=[
        "unmasked",
        "reserved bit",
        "reserved data opcode",
        "reserved control opcode",
        "fragmented control frame",
        "long control frame",
        "continuation out of place",
        "new message inside a fragmented one",
        "text not UTF-8",
        "one byte not UTF-8",
        "close frame of one byte",
        "close code not allowed",
        "close reason not UTF-8",
        "garbage",
    ],
)
def test_a_bad_frame_closes_the_connection_with_its_code(data: bytes, code: int) -> None:
    ws, tr = reader()
    ws.data_received(data + text("4after"))
    assert [m for m in ws.messages if m == "4after"] == []
    assert closed_with(tr, code) and ws.ends == 1
    ws.connection_lost(None)
    assert ws.closed


def test_a_close_frame_of_the_client_is_answered_and_the_connection_closed() -> None:
    ws, tr = reader()
    ws.data_received(client_frame(wsprotocol.CLOSE, struct.pack("!H", 1001) + b"bye") + text("4"))
    assert ws.messages == [] and closed_with(tr, 1000) and ws.ends == 1


def test_pings_are_answered_until_the_client_leaves_too_much_unread() -> None:
    ws, tr = reader()
    ping = client_frame(wsprotocol.PING, b"x" * 125)
    ws.data_received(ping)
    assert tr.written == [wsprotocol.control_frame(wsprotocol.PONG, b"x" * 125)]
    tr.read = tr.get_write_buffer_size()
    pongs = wsprotocol.UNREAD_BYTES_FOR_PING // 127 + 1
    ws.data_received(ping * (pongs + 10))  # and reads none of the pongs
    assert tr.aborted
    assert len(tr.written) == 1 + pongs  # none after the limit


def test_an_empty_close_frame_is_a_close_too() -> None:
    ws, tr = reader()
    ws.data_received(client_frame(wsprotocol.CLOSE, b""))
    assert closed_with(tr, 1000)


async def test_closing_waits_for_the_client_close_frame_and_reads_nothing_more() -> None:
    ws, tr = reader()
    closing = asyncio.create_task(ws.close(1001))
    await asyncio.sleep(0)
    assert tr.written == [wsprotocol.close_frame(1001)] and not tr.closed and ws.ends == 1
    ws.data_received(text("4late") + client_frame(wsprotocol.PING, b""))
    assert ws.messages == [] and tr.written == [wsprotocol.close_frame(1001)]
    ws.data_received(client_frame(wsprotocol.CLOSE, struct.pack("!H", 1000)))
    assert tr.closed and tr.written == [wsprotocol.close_frame(1001)]  # not answered twice
    ws.connection_lost(None)
    assert await asyncio.wait_for(closing, 1) is True


async def test_a_client_that_does_not_answer_a_close_is_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsprotocol, "CLOSE_TIMEOUT", 0.05)
    ws, tr = reader()
    ws.end()
    await asyncio.sleep(0.1)
    assert tr.aborted


def test_frames_with_16_and_64_bit_lengths_are_read() -> None:
    ws, _ = reader(1 << 20)
    ws.data_received(client_frame(wsprotocol.BINARY, b"a" * 200))
    ws.data_received(client_frame(wsprotocol.BINARY, b"b" * 70_000))
    assert ws.messages == [b"a" * 200, b"b" * 70_000]


# --- a real server: the connection is no longer aiohttp's --------------------------------------


class Server:
    """A Socket.IO server on this transport (1,000-byte messages at most): `echo` answers
    its argument, `record` appends it to `recorded`."""

    def __init__(self) -> None:
        self.sio = transport.SocketServer(async_mode="aiohttp", max_http_buffer_size=1000)
        self.recorded: list[str] = []
        sio = self.sio

        @sio.on("connect")  # type: ignore[untyped-decorator]
        async def connect(sid: str, environ: dict[str, Any]) -> None:
            environ.clear()  # as the app's (events.py): the HTTP request is not kept

        @sio.on("echo")  # type: ignore[untyped-decorator]
        async def echo(sid: str, data: str) -> str:
            return data

        @sio.on("record")  # type: ignore[untyped-decorator]
        async def record(sid: str, data: str) -> None:
            self.recorded.append(data)

        app = web.Application()
        sio.attach(app)
        self.websockets = transport.install(sio, Heartbeat(25, 20))
        self.http = TestServer(app)
        self.url = ""

    async def __aenter__(self) -> Server:
        await self.http.start_server()
        self.url = f"http://127.0.0.1:{self.http.port}/socket.io/?EIO=4&transport=websocket"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as running:
        yield running


async def connected(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket client that has opened its Engine.IO and Socket.IO sessions."""
    ws = await http.ws_connect(url)
    assert (await ws.receive_str()).startswith("0{")
    await ws.send_str("40")
    assert (await ws.receive_str()).startswith("40")
    return ws


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(60):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(kind: type, collect: bool = True) -> int:
    if collect:
        gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


GOOD_HANDSHAKE = {
    "Host": "x",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",  # RFC 6455's example
    "Sec-WebSocket-Version": "13",
}


async def handshake(url: str, headers: dict[str, str]) -> bytes:
    """What the server answers a WebSocket handshake of `headers`, up to its blank line."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        path = url.split(port, 1)[1]
        writer.write(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


async def test_a_valid_websocket_handshake_is_answered_with_the_key_s_digest(
    server: Server,
) -> None:
    answer = await handshake(server.url, GOOD_HANDSHAKE)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer  # RFC 6455
    assert b"Sec-WebSocket-Extensions" not in answer and b"Sec-WebSocket-Protocol" not in answer


@pytest.mark.parametrize(
    "changed",
    [
        {"Upgrade": "h2c"},
        {"Connection": "keep-alive"},
        {"Sec-WebSocket-Version": "12"},
        {"Sec-WebSocket-Version": ""},
        {"Sec-WebSocket-Key": ""},
        {"Sec-WebSocket-Key": "c2hvcnQ="},  # 5 bytes
        {"Sec-WebSocket-Key": "not base64 at all!"},
        {"Sec-WebSocket-Key": "\u00e9AAAAAAAAAAAAAAAAAAAAA=="},  # not ASCII: was a 500
    ],
)
async def test_an_invalid_websocket_handshake_is_refused_with_400(
    server: Server, changed: dict[str, str]
) -> None:
    headers = {**GOOD_HANDSHAKE, **changed}
    answer = await handshake(server.url, {k: v for k, v in headers.items() if v})
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert not server.sio.eio.sockets  # and no session is left behind


async def polling_session(http: aiohttp.ClientSession, server: Server) -> tuple[str, str]:
    """A session on polling with its Socket.IO connection open: its sid and its polling URL."""
    polling = server.url.replace("transport=websocket", "transport=polling")
    async with http.get(polling) as response:
        sid = json.loads((await response.text())[1:])["sid"]
    session = f"{polling}&sid={sid}"
    async with http.post(session, data="40") as response:
        assert response.status == 200
    async with http.get(session) as response:
        assert (await response.text()).startswith("40")
    return sid, session


async def test_a_refused_upgrade_leaves_the_polling_session_as_it_was(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        sid, session = await polling_session(http, server)
        socket = server.sio.eio.sockets[sid]
        before = socket.last_ping
        upgrade = server.url + f"&sid={sid}"
        for changed in ({"Sec-WebSocket-Version": "12"}, {"Sec-WebSocket-Key": "c2hvcnQ="}):
            answer = await handshake(upgrade, {**GOOD_HANDSHAKE, **changed})
            assert answer.startswith(b"HTTP/1.1 400 "), answer
        # Still there, on polling, with its ping cycle untouched (the refusal had marked a ping
        # outstanding: refused within 5 s of a pong, the session was closed as gone 20 s on).
        assert server.sio.eio.sockets.get(sid) is socket
        assert not socket.closed and not socket.upgraded and not socket.upgrading
        assert socket.last_ping == before
        async with http.post(session, data='42["record","still here"]') as response:
            assert response.status == 200
        await eventually(lambda: server.recorded == ["still here"])


async def test_aiohttp_holds_nothing_of_an_open_websocket(server: Server) -> None:
    kinds = (web.BaseRequest, RequestHandler, web.WebSocketResponse)
    before = {kind: alive(kind) for kind in kinds}
    async with aiohttp.ClientSession() as http:
        clients = [await connected(http, server.url) for _ in range(20)]
        for ws in clients:
            await ws.send_str('421["echo","hi"]')
            assert await ws.receive_str() == '431["hi"]'
        assert len(server.websockets) == 20
        for kind, count in before.items():
            assert alive(kind) == count, kind  # the clients' own are not web.* objects
        assert alive(EngineWebSocket) == 20
        # No task per idle connection.
        assert [t for t in asyncio.all_tasks() if "EngineWebSocket" in repr(t.get_coro())] == []
        # And a close frame still ends one.
        await clients[0].close()
        await eventually(lambda: len(server.websockets) == 19)
        for ws in clients[1:]:
            await ws.close()
    await eventually(lambda: not server.sio.eio.sockets)
    assert len(server.websockets) == 0


async def test_aiohttp_leaves_no_cyclic_garbage_behind_an_open_websocket(server: Server) -> None:
    # Its request handler and its request parser name each other: unless the parser is let go
    # when the connection is taken from aiohttp, each connection leaves ~20 objects (handler,
    # parser, headers) for the cyclic collector, which paused the server 15 ms at a time
    # while pairing.
    gc.collect()
    gc.disable()
    try:
        before = alive(RequestHandler, collect=False)
        async with aiohttp.ClientSession() as http:
            clients = [await connected(http, server.url) for _ in range(20)]
            for ws in clients:
                await ws.send_str('421["echo","hi"]')
                assert await ws.receive_str() == '431["hi"]'
            assert alive(RequestHandler, collect=False) == before
            for ws in clients:
                await ws.close()
    finally:
        gc.enable()


async def test_the_server_closes_every_websocket_on_shutdown(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        clients = [await connected(http, server.url) for _ in range(3)]
        closing = asyncio.create_task(server.websockets.close_all())
        for ws in clients:
            message = await ws.receive()  # and the client answers the close frame
            assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1001
        await asyncio.wait_for(closing, 2)
        assert len(server.websockets) == 0


@pytest.mark.parametrize(
    ("sent", "code"), [("4" + "x" * 1000, 1009), ("x", 1000)], ids=["too large", "not Engine.IO"]
)
async def test_a_message_too_large_or_not_engine_io_ends_the_websocket(
    server: Server, sent: str, code: int
) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await connected(http, server.url)
        await ws.send_str(sent)
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == code
    await eventually(lambda: len(server.websockets) == 0)


async def test_what_a_client_sent_before_it_closed_is_still_handled(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await connected(http, server.url)
        for i in range(5):
            await ws.send_str(f'42["record","{i}"]')
        await ws.close()
    await eventually(lambda: len(server.websockets) == 0 and len(server.recorded) == 5)
    assert server.recorded == ["0", "1", "2", "3", "4"]
    assert server.sio.eio.sockets == {}  # forgotten at once, as engine.io does


class FakeEngineSocket:
    """An engine.io socket whose handling of a packet waits until told."""

    def __init__(self) -> None:
        self.sid = "s"
        self.connected = self.closed = False
        self.upgraded = self.upgrading = False
        self.last_ping: float | None = None
        self.release = asyncio.Event()
        self.received: list[Any] = []
        self.queue = transport.PacketQueue()
        self.server = self
        self.handlers: dict[str, Any] = {}

    async def receive(self, pkt: Any) -> None:
        await self.release.wait()
        self.received.append(pkt.data)


async def test_a_client_that_floods_is_not_read_until_its_packets_are_handled() -> None:
    socket = FakeEngineSocket()
    tr = FakeTransport()
    heartbeat = Heartbeat(25, 20)
    ws = EngineWebSocket(socket, tr, 10_000, heartbeat, set(), 0)  # type: ignore[arg-type]
    ws.open()
    for _ in range(600):
        ws.data_received(text("6" + "x" * 100))  # NOOPs
    assert tr.paused  # over 64 KiB waiting
    socket.release.set()
    await eventually(lambda: not tr.paused)
    assert len(socket.received) == 600
    heartbeat.forget(ws.conn)  # type: ignore[arg-type]


def test_a_websocket_runs_on_uvloop_as_on_asyncio() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with Server() as server, aiohttp.ClientSession() as http:
            ws = await connected(http, server.url)
            await ws.send_str('421["echo","hi"]')
            assert await ws.receive_str() == '431["hi"]'
            await ws.send_str("4" + "x" * 1000)
            message = await ws.receive()
            assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1009
            await eventually(lambda: len(server.websockets) == 0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_a_poll_during_the_upgrade_is_answered_with_a_noop_and_the_probe_upgrades(
    server: Server,
) -> None:
    base = server.url.replace("&transport=websocket", "")
    async with aiohttp.ClientSession() as http:
        sid, polling = await polling_session(http, server)
        ws = await http.ws_connect(f"{base}&transport=websocket&sid={sid}")
        # Open, not probed yet: engine.io's polls are over for this session.
        async with http.get(polling) as response:
            assert await response.text() == "6"
        await ws.send_str("2probe")
        assert await ws.receive_str() == "3probe"
        await ws.send_str("5")
        await ws.send_str('421["echo","up"]')
        # The NOOP that would have ended a pending poll (there was none) comes first.
        assert [await ws.receive_str(), await ws.receive_str()] == ["6", '431["up"]']
        await ws.close()
    await eventually(lambda: not server.sio.eio.sockets)


class EventsAtOnce:
    """A Socket.IO server that starts events at once (as transport.SocketServer.event_now)."""

    def __init__(self) -> None:
        self.now: list[str] = []
        self.later: list[str] = []

    def event_now(self, sid: str, data: Any) -> bool:
        if isinstance(data, str) and data.startswith("2"):
            self.now.append(data)
            return True
        return False

    async def on_message(self, sid: str, data: Any) -> None:
        await asyncio.sleep(0.01)
        self.later.append(data)


async def test_an_event_starts_as_it_is_read_and_never_before_what_came_first() -> None:
    socket = FakeEngineSocket()
    server = EventsAtOnce()
    socket.handlers["message"] = server.on_message
    heartbeat = Heartbeat(25, 20)
    ws = EngineWebSocket(socket, FakeTransport(), 10_000, heartbeat, set(), 0)  # type: ignore[arg-type]
    ws.open()
    ws.data_received(text('42["first"]'))
    assert server.now == ['2["first"]'] and ws._task is None  # no task to get there
    # A CONNECT goes the usual way (a task): the events after it wait their turn behind it.
    ws.data_received(text("40") + text('42["second"]'))
    assert server.now == ['2["first"]']
    await eventually(lambda: len(server.later) == 2)
    assert server.later == ["0", '2["second"]']
    ws.data_received(text('42["third"]'))
    assert server.now == ['2["first"]', '2["third"]']
    heartbeat.forget(ws.conn)  # type: ignore[arg-type]
