"""Figures for the attacks on the transport, at the scale of issue 11: server RSS growth, the
slowest check-in of a paired bystander meanwhile, log lines written, and whether the attacker
was cut off.

Starts a private redis-server and `python -m server` from --tree (default: this checkout; give
an older checkout to measure it), on loopback, one attack at a time, each bounded in time.

    .venv/bin/python scripts/transport_abuse.py [--tree DIR] [--only burst,unread,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import socketio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import RedisServer, ServerProcess  # noqa: E402
from tests.support.raw import event, raw_socket, rss_mb  # noqa: E402

ATTACKER = "127.0.0.2"  # loopback, but not the bystander's address
LIMIT_SECONDS = 15.0  # each attack stops by then


class Bystander:
    """A tracked app and its tracker (python-socketio), paired; the app checks in."""

    def __init__(self) -> None:
        self.tracked = socketio.AsyncClient(reconnection=False)
        self.tracker = socketio.AsyncClient(reconnection=False)
        self.token = ""
        self._confirmed: asyncio.Queue[Any] = asyncio.Queue()

    async def start(self, url: str) -> None:
        registered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.tracked.on("codeRegistered", registered.set_result)
        self.tracked.on("checkInConfirmed", self._confirmed.put_nowait)
        self.tracker.on("trackingStarted", started.set_result)
        await self.tracked.connect(url, transports=["websocket"])
        await self.tracker.connect(url, transports=["websocket"])
        await self.tracked.emit("registerCode", "424242")
        await asyncio.wait_for(registered, 10)
        await self.tracker.emit("trackCode", "424242")
        self.token = (await asyncio.wait_for(started, 10))["sessionToken"]

    async def check_in(self) -> float:
        began = time.monotonic()
        await self.tracked.emit("checkIn", self.token)
        await asyncio.wait_for(self._confirmed.get(), 30)
        return time.monotonic() - began

    async def stop(self) -> None:
        for client in (self.tracked, self.tracker):
            with contextlib.suppress(Exception):
                await client.disconnect()


async def deaf_websocket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket whose client never reads (4 KB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ATTACKER, 0))
    sock.setblocking(False)
    host, port = url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(masked(b"40"))
    return reader, writer


def masked(payload: bytes, opcode: int = 0x1) -> bytes:
    key = b"\x01\x02\x03\x04"
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# --- the attacks: each returns what it saw ---------------------------------------------------


async def binary(url: str) -> str:
    """`45999999999-[...]`, then 16 KB binary frames: 200 MB at most."""
    async with raw_socket(url) as attacker:
        await attacker.send('45999999999-["checkIn",{"_placeholder":true,"num":0}]')
        frame = b"\x00" * 16_000
        sent = 0
        started = time.monotonic()
        closed = False
        with contextlib.suppress(ConnectionError, RuntimeError):
            while sent < 12_500 and time.monotonic() - started < LIMIT_SECONDS:
                await attacker.ws.send_bytes(frame)
                sent += 1
                if sent % 100 == 0 and await attacker.closed(0.001):
                    closed = True
                    break
        closed = closed or await attacker.closed(3)
    return f"{sent * 16 / 1000:.0f} MB sent, {'cut off' if closed else 'still connected'}"


async def burst(url: str) -> str:
    """100,000 checkIn from one WebSocket, as fast as it takes them."""
    async with raw_socket(url) as attacker:
        packet = event("checkIn", "0" * 64)
        sent = 0
        started = time.monotonic()
        with contextlib.suppress(ConnectionError, RuntimeError):
            while sent < 100_000 and time.monotonic() - started < LIMIT_SECONDS:
                await attacker.send(packet)
                sent += 1
        await asyncio.sleep(2)
        return f"{sent} sent in {time.monotonic() - started - 2:.1f} s"


async def unread(url: str) -> str:
    """300,000 getStatus from a client that never reads a reply."""
    _, writer = await deaf_websocket(url)
    frame = masked(event("getStatus", {"sessionToken": "0" * 64}).encode()) * 100
    sent = 0
    started = time.monotonic()
    try:
        while sent < 300_000 and time.monotonic() - started < 3 * LIMIT_SECONDS:
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), LIMIT_SECONDS)
            sent += 100
    except (ConnectionError, TimeoutError):
        return f"{sent} sent, then cut off"
    finally:
        writer.close()
    return f"{sent} sent, still connected"


async def flood(url: str) -> str:
    """5,000 malformed packets and 5,000 wrong codes from one client."""
    async with raw_socket(url) as attacker:
        for _ in range(5_000):
            await attacker.send("42[")
            await attacker.emit("trackCode", "000001")
        await attacker.emit("getStatus", {"sessionToken": "0" * 64})
        with contextlib.suppress(TimeoutError):
            while (got := await attacker.next_event(10)) is not None and got[1] != (
                "Invalid session token"
            ):
                pass
    return "10,000 packets sent"


async def half_requests(url: str) -> str:
    """1,008 connections from one address with request headers that never end; then a new
    client from another address tries to connect."""
    port = int(url.rsplit(":", 1)[1])
    held = []

    def open_all() -> None:
        for _ in range(1_008):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((ATTACKER, 0))
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                sock.close()
                return
            held.append(sock)

    await asyncio.to_thread(open_all)
    await asyncio.sleep(0.5)
    still_open = sum(not hung_up(sock) for sock in held)
    try:
        newcomer = socketio.AsyncClient(reconnection=False)
        try:
            await asyncio.wait_for(newcomer.connect(url, transports=["websocket"]), 5)
            verdict = "a new client connects"
        except Exception as exc:
            verdict = f"a new client cannot connect ({exc.__class__.__name__})"
        finally:
            with contextlib.suppress(Exception):
                await newcomer.disconnect()
    finally:
        for sock in held:
            sock.close()
    return f"{len(held)} opened, {still_open} still open; {verdict}"


def hung_up(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


ATTACKS: dict[str, Callable[[str], Awaitable[str]]] = {
    "binary": binary,
    "burst": burst,
    "unread": unread,
    "flood": flood,
    "half-requests": half_requests,
}


async def measure(tree: Path, name: str, workdir: Path) -> dict[str, Any]:
    redis = RedisServer(workdir / f"redis-{name}").start()
    # The server runs from `tree` (its own server package), the harness from here.
    command = ["sh", "-c", 'cd "$1" && exec "$0" -m server', sys.executable, str(tree)]
    if name == "half-requests":
        command = ["prlimit", "--nofile=1024:1024", *command]
    server = ServerProcess(
        workdir / f"server-{name}.log",
        redis_url=redis.url,
        command=command,
        env={"LOG_LEVEL": "INFO"},
    )
    await server.start()
    bystander = Bystander()
    try:
        await bystander.start(server.url)
        lines_before = len(server.log_text().splitlines())
        before = peak = rss_mb(server)
        task = asyncio.create_task(ATTACKS[name](server.url))
        slowest = 0.0
        while not task.done():
            slowest = max(slowest, await bystander.check_in())
            peak = max(peak, rss_mb(server))
            await asyncio.sleep(0.2)
        outcome = await task
        peak = max(peak, rss_mb(server))
        lines = len(server.log_text().splitlines()) - lines_before
        return {
            "attack": name,
            "outcome": outcome,
            "rss_mb": f"{before:.0f} -> {peak:.0f} (+{peak - before:.0f})",
            "slowest_check_in_ms": round(slowest * 1000),
            "log_lines": lines,
        }
    finally:
        await bystander.stop()
        with contextlib.suppress(Exception):
            server.stop(timeout=20)
        server.kill()
        redis.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose server to run")
    parser.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attacks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.only.split(","):
            row = await measure(args.tree.resolve(), name, Path(workdir))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
