"""A hostile client's tools: Socket.IO by hand over aiohttp, and a server process's memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import ServerProcess


def rss_mb(server: ServerProcess) -> float:
    """The server process's resident memory, in MB."""
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def event(name: str, *args: Any) -> str:
    """A Socket.IO EVENT packet as text."""
    return "42" + json.dumps([name, *args], separators=(",", ":"))


class RawSocket:
    """One Socket.IO connection over a WebSocket, driven packet by packet."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sid = ""

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def emit(self, name: str, *args: Any) -> None:
        await self.send(event(name, *args))

    async def next_event(self, timeout: float = 5.0) -> list[Any] | None:
        """The next event the server sends (pings answered); None once the server hung up."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    return None
                data = str(message.data)
                if data == "2":
                    await self.ws.send_str("3")
                elif data.startswith("42"):
                    return list(json.loads(data[2:]))
                elif data == "1":
                    return None

    async def expect(self, name: str, timeout: float = 5.0) -> list[Any]:
        """The arguments of the next `name` event (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                got = await self.next_event(timeout)
                assert got is not None, f"the server hung up while {name!r} was expected"
                if got[0] == name:
                    return got[1:]

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server hangs up within `timeout` s (events meanwhile are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.next_event(timeout) is not None:
                    pass
        except TimeoutError:
            return False
        return True


@asynccontextmanager
async def raw_socket(url: str, connect: bool = True) -> AsyncIterator[RawSocket]:
    """A WebSocket-only Socket.IO connection to the server at `url` (CONNECTed unless told)."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        raw = RawSocket(ws)
        opened = await ws.receive(timeout=5)
        assert str(opened.data).startswith("0{"), opened
        if connect:
            await ws.send_str("40")
            reply = await ws.receive(timeout=5)
            assert str(reply.data).startswith("40{"), reply
            raw.sid = json.loads(str(reply.data)[2:])["sid"]
        yield raw
