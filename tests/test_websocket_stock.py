"""WEBSOCKET_DRIVER=stock, engine.io's own WebSocket handling, keeps the transport defences
that matter: no compression (PLATFORM.md), a client that does not read its replies is hung up
on, attachments are refused, a frame that is not an Engine.IO packet ends the connection
without a traceback. (The compatibility tests of pairing and disconnects run on it too.)"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import websockets

from server import errors
from tests.conftest import StartServer
from tests.support.metrics import scrape, value
from tests.support.processes import ServerProcess
from tests.support.raw import event, raw_socket
from tests.test_transport_abuse import FLOOD_SECONDS, _mask, deaf_websocket


@pytest.fixture
def websocket_driver() -> str:
    return "stock"


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


async def test_stock_websockets_refuse_compression(start_server: StartServer) -> None:
    server = await start_server()
    # The websockets client offers permessage-deflate by default, as browsers and Node do;
    # engine.io's driver accepted it (aiohttp's default compress=True).
    async with websockets.connect(ws_url(server)) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert (await ws.recv()).startswith("0{")


async def test_stock_websockets_hang_up_on_a_client_that_does_not_read(
    start_server: StartServer,
) -> None:
    # The replies pile up in the socket's bounded queue while engine.io's writer task waits
    # for the client; at the bound the session is closed and its TCP connection aborted
    # (without the abort the reader went on reading the flood for as long as it lasted).
    server = await start_server(OUTBOUND_BUFFER_BYTES="65536")
    async with deaf_websocket(server.url) as writer:
        frame = _mask(event("getStatus", {"sessionToken": "0" * 64}).encode(), 0x1) * 100
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while time.monotonic() - started < FLOOD_SECONDS:
                writer.write(frame)
                await writer.drain()
        took = time.monotonic() - started
    assert took < FLOOD_SECONDS, "the server kept reading from a client that does not read"
    samples = await scrape(server.url)
    assert value(samples, "alliswell_refusals_total", quota="outbound_buffer_bytes") == 1


async def test_stock_websockets_refuse_attachments_and_end_on_garbage(
    start_server: StartServer,
) -> None:
    server = await start_server()
    async with raw_socket(server.url) as attacker:
        await attacker.send('451-["checkIn",{"_placeholder":true,"num":0}]')
        assert await attacker.expect("error") == [errors.ATTACHMENTS_REFUSED]
    async with raw_socket(server.url) as garbage:
        await garbage.send("abc")  # not an Engine.IO packet
        assert await garbage.closed(5)
    await asyncio.sleep(0.2)
    assert "Traceback" not in server.log_text()
