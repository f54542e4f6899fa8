"""Transport settings that decide memory and reconnects: no WebSocket compression, sized messages."""

from __future__ import annotations

import asyncio

import websockets

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
