"""A minimal Socket.IO v4 client that starts on HTTP long-polling, and may upgrade to WebSocket.

Today's apps (socket.io-client's defaults) open over polling, connect Socket.IO, then probe a
WebSocket and upgrade to it; some clients stay on polling. This client does the same steps
with the fewest packets and keeps no state beyond answering pings, so that a benchmark measures
the server's cost of such a connection, not the client's. Requests go through the caller's
aiohttp session (keep-alive, as a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from loadtest import Closed, engineio_url

SEPARATOR = "\x1e"  # between Engine.IO packets in one polling body
# As a browser's XHR sends a string; engine.io (Node) reads an octet-stream body as binary.
TEXT = {"Content-Type": "text/plain;charset=UTF-8"}


class PollingSocket:
    """Connects over polling; with `upgrade`, then moves to WebSocket as socket.io-client does."""

    def __init__(self, http: aiohttp.ClientSession, url: str, *, upgrade: bool) -> None:
        self._http = http
        self._base = url
        self._upgrade = upgrade
        self._poll_url = ""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.transport = "polling"
        self.closed = False

    async def connect(self) -> None:
        handshake = engineio_url(self._base, "polling")
        async with self._http.get(handshake) as response:
            opened = await response.text()
        if not opened.startswith("0"):
            raise Closed(f"unexpected Engine.IO open packet {opened[:40]!r}")
        sid = json.loads(opened[1:].split(SEPARATOR)[0])["sid"]
        self._poll_url = f"{handshake}&sid={sid}"
        await self._post("40")
        while True:
            packets = await self._get()
            if any(packet.startswith("40") for packet in packets):
                break
            if any(packet.startswith(("44", "1")) for packet in packets):
                raise Closed(f"Socket.IO connect refused: {packets!r:.80}")
            await self._answer(packets)
        if self._upgrade:
            await self._upgrade_to_websocket(sid)
        else:
            self._reader = asyncio.create_task(self._poll())

    async def _upgrade_to_websocket(self, sid: str) -> None:
        # The client keeps a poll pending while it probes; the server answers it (a noop) once
        # the probe succeeds, and only then does the client send the upgrade packet.
        pending = asyncio.create_task(self._get())
        url = f"{engineio_url(self._base, 'websocket')}&sid={sid}"
        ws = await self._http.ws_connect(url, autoping=True, max_msg_size=1 << 20)
        self._ws = ws
        await ws.send_str("2probe")
        answer = await ws.receive_str()
        if answer != "3probe":
            raise Closed(f"probe answered {answer!r:.40}")
        await self._answer(await asyncio.wait_for(pending, 10))
        await ws.send_str("5")
        self.transport = "websocket"
        self._reader = asyncio.create_task(self._read_ws(ws))

    async def _get(self) -> list[str]:
        async with self._http.get(self._poll_url) as response:
            if response.status != 200:
                raise Closed(f"poll answered {response.status}")
            return (await response.text()).split(SEPARATOR)

    async def _post(self, body: str) -> None:
        async with self._http.post(self._poll_url, data=body.encode(), headers=TEXT) as response:
            if response.status != 200:
                raise Closed(f"post answered {response.status}")
            await response.read()

    async def _answer(self, packets: list[str]) -> None:
        for packet in packets:
            if packet == "2":
                await self._post("3")

    async def _poll(self) -> None:
        try:
            while True:
                packets = await self._get()
                if any(packet.startswith(("1", "41")) for packet in packets):
                    break
                await self._answer(packets)
        except (aiohttp.ClientError, OSError, Closed):
            pass
        finally:
            self.closed = True

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                if message.data == "2":
                    await ws.send_str("3")
                elif message.data.startswith(("41", "1")):
                    break
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            self.closed = True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            if self._ws is not None:
                await self._ws.close()
            elif self._poll_url:
                await asyncio.wait_for(self._post("1"), 5)
        self.closed = True
