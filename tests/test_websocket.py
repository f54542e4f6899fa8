"""WebSockets without tasks of their own: frames written directly, one heartbeat for all."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server import transport
from server.websocket import Connection, Heartbeat, frame


def test_frames_are_unmasked_final_frames_with_the_shortest_length() -> None:
    assert frame("") == b"\x81\x00"
    assert frame("2") == b"\x81\x012"
    assert frame("a" * 125)[:2] == b"\x81\x7d"
    assert frame("a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert frame("a" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert frame(b"\x00\x01") == b"\x82\x02\x00\x01"
    assert frame("é") == b"\x81\x02" + "é".encode()


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeWebSocket:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> bool:
        self.closed = True
        return True


class FakeSocket:
    def __init__(self) -> None:
        self.last_ping: float | None = None
        self.closing = self.closed = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched(heartbeat: Heartbeat, *, ping: bool = True) -> tuple[Connection, FakeTransport]:
    tr = FakeTransport()
    conn = Connection(FakeSocket(), FakeWebSocket(), tr, heartbeat.clock())  # type: ignore[arg-type]
    heartbeat.watch(conn, ping=ping)
    return conn, tr


def run_for(heartbeat: Heartbeat, clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        clock.now += 0.1
        heartbeat.turn()


async def test_a_client_is_pinged_an_interval_after_it_connected_and_after_each_pong() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    conn, tr = watched(heartbeat)

    run_for(heartbeat, clock, 24.5)
    assert tr.written == []
    run_for(heartbeat, clock, 1.5)
    assert tr.written == [frame("2")] and conn.socket.last_ping

    run_for(heartbeat, clock, 3)
    heartbeat.heard(conn, 3)  # the pong
    assert conn.socket.last_ping is None
    run_for(heartbeat, clock, 24.5)
    assert tr.written == [frame("2")]
    run_for(heartbeat, clock, 1.5)
    assert tr.written == [frame("2")] * 2


async def test_messages_do_not_delay_the_next_ping_but_keep_the_client_alive() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    conn, tr = watched(heartbeat)
    for _ in range(10):
        run_for(heartbeat, clock, 10)
        heartbeat.heard(conn, 4)  # a message, never a pong
    # One ping, no second one without a pong, and not hung up: it keeps talking.
    assert tr.written == [frame("2")] and not conn.ws.closed


async def test_a_silent_client_is_hung_up_on_after_interval_plus_timeout() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    conn, _ = watched(heartbeat)
    run_for(heartbeat, clock, 44)
    assert not conn.ws.closed
    run_for(heartbeat, clock, 2)
    await asyncio.sleep(0)  # the close runs in a task of its own
    assert conn.ws.closed
    assert len(heartbeat) == 0


async def test_an_upgraded_client_is_pinged_by_engine_io_until_its_first_pong() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    conn, tr = watched(heartbeat, ping=False)
    conn.socket.last_ping = clock.now  # engine.io's ping task pinged it
    run_for(heartbeat, clock, 30)
    assert tr.written == []
    heartbeat.heard(conn, 3)
    run_for(heartbeat, clock, 26)
    assert tr.written == [frame("2")]


async def test_closed_connections_are_forgotten_and_not_written_to() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    _, tr = watched(heartbeat)
    tr.closing = True
    run_for(heartbeat, clock, 60)
    assert tr.written == [] and len(heartbeat) == 0


async def test_a_connection_that_ended_is_let_go_at_once() -> None:
    clock = Clock()
    heartbeat = Heartbeat(25, 20, clock=clock)
    conn, tr = watched(heartbeat)
    other, _ = watched(heartbeat)
    heartbeat.forget(conn)
    assert len(heartbeat) == 1
    run_for(heartbeat, clock, 26)
    assert tr.written == []
    heartbeat.forget(other)
    assert len(heartbeat) == 0


# --- a real server, with short timers ---------------------------------------------------------


@pytest.fixture
async def fast_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A Socket.IO server on this transport with a 0.3 s ping interval and 0.3 s timeout."""
    reasons: list[str] = []
    sio = transport.SocketServer(async_mode="aiohttp", ping_interval=0.3, ping_timeout=0.3)

    @sio.on("disconnect")  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, reason: str) -> None:
        reasons.append(reason)

    app = web.Application()
    sio.attach(app)
    websockets = transport.install(sio, Heartbeat(0.3, 0.3, tick=0.05))

    async def heartbeat(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(websockets.heartbeat.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(heartbeat)
    server = TestServer(app)
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/socket.io/?EIO=4", reasons
    await server.close()


async def next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2) -> str:
    message = await asyncio.wait_for(ws.receive(), timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return str(message.data)


async def answer_pings(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    for _ in range(count):
        packet = await next_text(ws)
        while packet == "6":  # a NOOP, as engine.io sends one at the end of an upgrade
            packet = await next_text(ws)
        assert packet == "2"
        await ws.send_str("3")


async def eventually(check: Callable[[], Any], timeout: float = 3) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_websocket_client_that_answers_pings_stays_and_one_that_does_not_goes(
    fast_server: tuple[str, list[str]],
) -> None:
    url, reasons = fast_server
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "&transport=websocket") as ws:
            assert (await next_text(ws)).startswith("0{")
            await ws.send_str("40")
            assert (await next_text(ws)).startswith("40")
            await answer_pings(ws, 4)
            assert reasons == []
            # Now silent: hung up on (engine.io's service task may call it a ping timeout first).
            while not ws.closed:
                message = await asyncio.wait_for(ws.receive(), 3)
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                assert message.data in ("2", "1"), message
    await eventually(lambda: reasons)
    assert reasons[0] in ("transport close", "ping timeout")


async def connect_polling(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """A polling session that has sent its Socket.IO CONNECT: its sid, and its polling URL."""
    async with http.get(url + "&transport=polling") as response:
        sid = json.loads((await response.text())[1:])["sid"]
    polling = f"{url}&transport=polling&sid={sid}"
    async with http.post(polling, data="40") as response:
        assert response.status == 200
    return sid, polling


async def polled_once(http: aiohttp.ClientSession, url: str) -> str:
    """A polling session whose CONNECT's reply was fetched: its polling URL."""
    _, polling = await connect_polling(http, url)
    async with http.get(polling) as response:
        assert (await response.text()).startswith("40")
    return polling


async def test_a_client_upgraded_from_polling_is_pinged_and_its_queued_packets_arrive(
    fast_server: tuple[str, list[str]],
) -> None:
    url, reasons = fast_server
    async with aiohttp.ClientSession() as http:
        sid, polling = await connect_polling(http, url)
        async with http.ws_connect(f"{url}&transport=websocket&sid={sid}") as ws:
            await ws.send_str("2probe")
            assert await next_text(ws) == "3probe"
            async with http.get(polling) as response:  # the poll the upgrade ends
                assert "6" in (await response.text()).split("\x1e")
            await ws.send_str("5")
            # The CONNECT reply was queued for the poll that never came: it arrives first.
            assert (await next_text(ws)).startswith("40")
            await answer_pings(ws, 3)
            await ws.send_str("41")
            await ws.send_str("1")
            assert (await asyncio.wait_for(ws.receive(), 2)).type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            )
    await eventually(lambda: reasons)
    assert reasons == ["client disconnect"]


# --- engine.io's sweep of its sockets -----------------------------------------------------------


async def test_a_polling_client_that_stops_answering_pings_is_closed_for_a_ping_timeout(
    fast_server: tuple[str, list[str]],
) -> None:
    url, reasons = fast_server
    async with aiohttp.ClientSession() as http:
        await polled_once(http, url)
        # No more polls: the ping sent after 0.3 s is never fetched, let alone answered.
        await eventually(lambda: reasons, timeout=4)
    assert reasons == ["ping timeout"]


async def test_a_polling_client_is_pinged_without_a_task_of_its_own_and_each_pong_pings_again(
    fast_server: tuple[str, list[str]],
) -> None:
    url, reasons = fast_server
    async with aiohttp.ClientSession() as http:
        polling = await polled_once(http, url)
        for _ in range(3):
            # engine.io's ping task per cycle is not made: the server's PollingPings pings.
            coroutines = [repr(task.get_coro()) for task in asyncio.all_tasks()]
            assert not [c for c in coroutines if "_send_ping" in c], coroutines
            started = time.monotonic()
            async with http.get(polling) as response:
                assert await response.text() == "2"
            # 0.3 s after the pong (or the connect), within a tick (0.075 s) and some slack.
            assert 0.15 < time.monotonic() - started < 1.0
            async with http.post(polling, data="3") as response:
                assert response.status == 200
    assert reasons == []


class SweptSocket:
    def __init__(self, sid: str, last_ping: float | None) -> None:
        self.sid, self.last_ping = sid, last_ping
        self.closed = self.closing = False
        self.checked = 0

    async def check_ping_timeout(self) -> bool:
        self.checked += 1
        return True


async def test_the_sweep_wakes_once_a_tick_not_once_per_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # engine.io's own sweep waited ping_timeout / len(sockets) between two sockets (an
    # asyncio.wait_for each): 100 wake-ups a second for 2,000 clients and a 20 s timeout.
    eio = transport.EngineServer(async_mode="aiohttp", ping_timeout=20)
    now = time.time()
    late = {f"late{i}": SweptSocket(f"late{i}", now - 30) for i in range(1000)}
    fine = {f"fine{i}": SweptSocket(f"fine{i}", None) for i in range(999)}
    gone = SweptSocket("gone", None)
    gone.closed = True
    eio.sockets.update({"gone": gone} | late | fine)
    waits = 0
    wait_for = asyncio.wait_for

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal waits
        waits += 1
        return await wait_for(*args, **kwargs)

    monkeypatch.setattr(asyncio, "wait_for", counted)
    monkeypatch.setattr(transport, "SWEEP_TICK", 0.1)
    task = asyncio.create_task(eio._service_task())
    await asyncio.sleep(0.35)  # three ticks: 3 * 2,000 * 0.1 / 20 = 30 sockets looked at
    eio.service_task_event.set()
    await wait_for(task, 1)
    ticks = waits - 1  # the last wait ended with the stop
    assert 1 <= ticks <= 4  # engine.io's: ~70 waits in 0.35 s
    # Each tick looks at 2,000 * 0.1 / 20 = 10 sockets, in order: the closed one is forgotten,
    # the late ones are checked, none of the others.
    assert "gone" not in eio.sockets
    assert sum(s.checked for s in late.values()) == 10 * ticks - 1
    assert all(s.checked == 0 for s in fine.values())
