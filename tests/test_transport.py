"""Transport: no WebSocket compression, sized messages, malformed packets refused."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
import socketio
import websockets
from aiohttp.test_utils import TestServer
from engineio import exceptions
from engineio import packet as engineio_packet

from server import transport
from server.app import SIO, create_app
from server.ops import METRICS
from server.settings import Settings
from tests.support.metrics import parse, value
from tests.support.nodeclient import NodeDriver
from tests.support.processes import ServerProcess


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


async def test_websocket_compression_is_refused(server: ServerProcess) -> None:
    # The websockets client offers permessage-deflate by default, as browsers and Node do.
    async with websockets.connect(ws_url(server)) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert (await ws.recv()).startswith("0{")  # the Engine.IO open packet


async def test_an_oversized_websocket_message_closes_only_that_connection(
    server: ServerProcess,
) -> None:
    async with websockets.connect(ws_url(server), max_size=None) as bystander:
        await bystander.recv()
        await bystander.send("40")
        assert (await bystander.recv()).startswith("40")
        async with websockets.connect(ws_url(server)) as ws:
            await ws.recv()
            await ws.send("40")
            await ws.recv()
            await ws.send('42["checkIn","' + "a" * 100_000 + '"]')
            closed = await asyncio.wait_for(ws.wait_closed(), timeout=5)
            assert closed is None and ws.close_code == 1009  # message too big
        await bystander.send('42["checkIn","nope"]')
        assert await asyncio.wait_for(bystander.recv(), 5) == '42["error","Invalid session token"]'


async def test_undecodable_packets_get_an_error_and_the_connection_keeps_working(
    server: ServerProcess,
) -> None:
    malformed = [
        "42[",
        '42{"a":1}',
        "42[]",
        "42[5]",
        "42[null]",
        '42"checkIn"',
        '42[{"x":1}]',
        "4" + "[" * 5000 + "]" * 5000,
        "49",
        "4x",
        '42["checkIn"',
    ]
    async with websockets.connect(ws_url(server)) as ws:
        await ws.recv()
        await ws.send("40")
        assert (await ws.recv()).startswith("40")
        for packet in malformed:
            await ws.send(packet)
            reply = await asyncio.wait_for(ws.recv(), timeout=5)
            assert reply == '42["error","Malformed message: not a valid Socket.IO packet"]', packet
        # Events nobody handles are ignored, as the Node server ignored them.
        await ws.send('42["noSuchEvent",1]')
        await ws.send('42["registerCode","123456"]')
        reply = await asyncio.wait_for(ws.recv(), timeout=5)
        assert reply.startswith('42["codeRegistered",{"code":"123456","expiresAt":')
    assert "Traceback" not in server.log_text()


async def test_a_server_with_clients_that_left_by_polling_stops_at_once(
    server: ServerProcess, node: NodeDriver
) -> None:
    # engine.io kept a departed polling client's long-poll open for the ping timeout (45 s),
    # and the shutdown waited for it.
    stays = await node.connect(server.url, "polling", transports=["polling"])
    leaves = await node.connect(server.url, "polling", transports=["polling"])
    await leaves.disconnect()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 3
    assert await stays.wait_disconnect(5) == "transport close"


async def test_raw_engine_io_garbage_hurts_nobody(server: ServerProcess) -> None:
    import aiohttp

    frames: list[str | bytes] = ["", "7", "9abc", "\x00\xff", b"\x00\x01\x02", b"", "1", "6"]
    for frame in frames:
        async with websockets.connect(ws_url(server)) as ws:
            await ws.recv()
            await ws.send("40")
            await ws.recv()
            await ws.send(frame)
            # Whatever the server makes of it, it must answer a real event or hang up cleanly.
            try:
                await ws.send('42["checkIn","nope"]')
                reply = await asyncio.wait_for(ws.recv(), timeout=5)
                if reply == '42["error","Malformed message: not a valid Socket.IO packet"]':
                    reply = await asyncio.wait_for(ws.recv(), timeout=5)  # the binary frame's
                assert reply == '42["error","Invalid session token"]', (frame, reply)
            except websockets.ConnectionClosed:
                pass
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/socket.io/?EIO=4&transport=polling"
        async with http.get(url) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        for body in ["x", "4", "42[", "\x1e\x1e", "40" * 10_000]:
            async with http.post(f"{url}&sid={sid}", data=body) as response:
                assert response.status in (200, 400), (body[:10], response.status)
        async with http.post(f"{url}&sid=nope", data="40") as response:
            assert response.status == 400
    async with websockets.connect(ws_url(server)) as ws:  # the server still serves
        await ws.recv()
        await ws.send("40")
        assert (await ws.recv()).startswith("40")
    assert "Traceback" not in server.log_text()


async def test_a_bug_in_our_handling_of_a_packet_is_logged_with_its_traceback_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It was reported as "Malformed packet ... dropped" at INFO, with no traceback.
    app = create_app(Settings())

    async def broken_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        raise LookupError("a deliberate bug")

    app[SIO].on("connect", broken_connect)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/socket.io/?EIO=4&transport=websocket"))
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert str((await ws.receive(timeout=5)).data).startswith("0{")
            await ws.send_str("40")
            with pytest.raises(TimeoutError):
                reply = await ws.receive(timeout=1)
                pytest.fail(f"the client was answered {reply.data!r}")
        samples = parse((await app[METRICS].render()).decode())
    finally:
        await server.close()

    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert bugs and "a deliberate bug" in str(bugs[0].exc_info[1])  # type: ignore[index]
    assert not any("Malformed" in r.getMessage() for r in caplog.records)
    assert value(samples, "alliswell_errors_total", where="packet") == 1


def test_binary_data_is_found_at_any_depth_and_plain_payloads_are_not_binary() -> None:
    is_binary = transport.Packet.data_is_binary
    assert (
        is_binary(["checkInReceived", {"sessionToken": "ab", "timestamp": 1, "x": None}]) is False
    )
    assert is_binary(["e", 1.5, True, "s", [], {}]) is False
    assert is_binary(["e", {"a": [1, {"b": b"x"}]}]) is True
    assert is_binary(["e", [[bytearray(b"x")]]]) is True
    assert is_binary(b"") is True


def test_the_recipients_of_an_emit_are_python_socketios_participants() -> None:
    manager = socketio.AsyncManager()
    manager.set_server(socketio.AsyncServer())
    manager.initialize()
    for n in range(3):
        manager.basic_enter_room(f"s{n}", "/", None, eio_sid=f"e{n}")
        manager.basic_enter_room(f"s{n}", "/", f"s{n}", eio_sid=f"e{n}")
    manager.basic_enter_room("s1", "/", "trackers:t", eio_sid="e1")
    manager.basic_enter_room("s2", "/", "trackers:t", eio_sid="e2")
    rooms = manager.rooms["/"]
    for room in (None, "s0", "trackers:t", "nobody", ["s0", "trackers:t"], ("s2", "nobody")):
        expected = sorted(manager.get_participants("/", room))
        assert sorted(transport._participants(rooms, room)) == expected, room


def test_events_are_encoded_as_python_socketio_encodes_them() -> None:
    packet_class = transport.SocketServer().packet_class
    messages: list[list[Any]] = [
        ["checkInConfirmed", {"timestamp": 1_764_000_000_000}],
        ["error", "Invalid session token"],
        ["checkInMissed", {"sessionToken": "ab" * 32, "timestamp": 1, "none": None}],
        ["e", 1.5, True, 'é\n"', {}],
        ["e", {"nested": {"deeper": [1, 2]}}],
        ["e", {"blob": b"\x00\x01"}],
        ["e"],
    ]
    for namespace in ("/", "/other"):
        for message in messages:
            made = packet_class(socketio.packet.EVENT, namespace=namespace, data=message).encode()
            assert transport._encode(packet_class, namespace, message) == made, message


def _awaited_chain(coro: Any) -> list[str]:
    """The coroutines a suspended coroutine is inside of, outermost first (by name)."""
    names = []
    while coro is not None and hasattr(coro, "cr_await"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def test_a_pending_poll_makes_no_task_and_ends_as_engine_io_s_does() -> None:
    """PollingSocket's long poll: one coroutine of its own for a pending GET (engine.io's
    handle_get_request and poll folded into it), the first packet awaited under asyncio.timeout,
    not wait_for (a task per pending GET); what it answers is engine.io's."""
    sio = transport.SocketServer(async_mode="aiohttp", ping_interval=0.1, ping_timeout=0.1)

    def polling_socket() -> Any:
        socket = transport.PollingSocket(sio.eio, "a-sid")
        sio.eio.sockets[socket.sid] = socket
        return socket

    socket = polling_socket()
    queue = socket.queue
    # Packets queued before the poll go out together; a None after them stays queued.
    first, second = (engineio_packet.Packet(engineio_packet.MESSAGE, t) for t in ("a", "b"))
    for item in (first, second, None):
        queue.put_nowait(item)
    assert await socket.handle_get_request({}) == [first, second]
    assert queue.qsize() == 1
    assert await socket.handle_get_request({}) == []  # None alone: the writer stops
    # A pending poll is this task alone, two coroutines deep, and is answered by the next
    # packet.
    tasks = len(asyncio.all_tasks())
    poll = socket.handle_get_request({})
    pending = asyncio.create_task(poll)
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == tasks + 1
    assert _awaited_chain(poll) == ["_poll", "get"]
    queue.put_nowait(first)
    assert await pending == [first]
    # Nothing for ping_interval + ping_timeout: QueueEmpty, the session closed (engine.io's
    # 400), and no waiter is left behind.
    started = time.monotonic()
    with pytest.raises(exceptions.QueueEmpty):
        await socket.handle_get_request({})
    assert 0.15 < time.monotonic() - started < 1.0
    assert not queue._getters
    assert socket.closed and not socket.polling
    # Cancelled from outside (aiohttp's handler), as engine.io's: QueueEmpty too.
    socket = polling_socket()
    pending = asyncio.create_task(socket.handle_get_request({}))
    await asyncio.sleep(0.01)
    pending.cancel()
    with pytest.raises(exceptions.QueueEmpty):
        await pending
    assert not socket.queue._getters
    assert socket.closed and not socket.polling
    # On the way to a WebSocket, a poll is answered at once with a NOOP, as engine.io's.
    socket = polling_socket()
    socket.upgrading = True
    (noop,) = await socket.handle_get_request({})
    assert noop.packet_type == engineio_packet.NOOP and not socket.polling
