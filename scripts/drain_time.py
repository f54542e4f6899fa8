"""Drain time: how long the server takes from SIGTERM to exit with many clients connected.

Starts a private redis-server and the server (`python -m server`, persistence on), opens
--clients WebSocket Socket.IO connections, pairs them (half tracked, half trackers) and checks
each tracked one in once, so that every socket belongs to a stored session as in production.
Then it sends SIGTERM and reports the time from the signal to the process's exit, how many
clients saw their connection closed (an Engine.IO CLOSE or the WebSocket closing) and how many
got a Socket.IO DISCONNECT instead (after which a real client would not reconnect), and
the exit code. Each of --runs runs uses a fresh server; the median is reported.

    .venv/bin/python scripts/drain_time.py                      # 1,000 clients, 3 runs
    .venv/bin/python scripts/drain_time.py --clients 5000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchmark import Servers, stop
from loadtest import engineio_url, raise_fd_limit


class Client:
    """A minimal Socket.IO client over one WebSocket that notes how its connection ended."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = engineio_url(url, "websocket")
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: dict[str, asyncio.Queue[Any]] = {}
        self.ended: str | None = None  # "close" (CLOSE or WebSocket closed) or "disconnect"
        self.ended_at = 0.0
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url, autoping=True)
        opened = await self.ws.receive_str()
        assert opened.startswith("0"), opened
        await self.ws.send_str("40")
        while (packet := await self.ws.receive_str()) == "2":
            await self.ws.send_str("3")
        assert packet.startswith("40"), packet
        self.reader = asyncio.create_task(self.read())

    async def emit(self, event: str, data: Any) -> None:
        assert self.ws is not None
        await self.ws.send_str("42" + json.dumps([event, data]))

    async def expect(self, event: str, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            return await self.events.setdefault(event, asyncio.Queue()).get()

    async def read(self) -> None:
        assert self.ws is not None
        how = "close"
        try:
            async for message in self.ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                packet: str = message.data
                if packet == "2":
                    await self.ws.send_str("3")
                elif packet.startswith("42"):
                    name, *args = json.loads(packet[2:])
                    self.events.setdefault(name, asyncio.Queue()).put_nowait(
                        args[0] if args else None
                    )
                elif packet.startswith("41"):
                    how = "disconnect"
                    break
                elif packet == "1":
                    break
        except (aiohttp.ClientError, OSError):
            pass
        self.ended, self.ended_at = how, time.perf_counter()


async def setup(url: str, http: aiohttp.ClientSession, count: int) -> list[Client]:
    """`count` connected clients, paired two by two, each tracked one checked in once."""
    clients = [Client(http, url) for _ in range(count)]
    gate = asyncio.Semaphore(100)
    base = random.randrange(100_000, 999_999 - count)

    async def pair(n: int) -> None:
        tracked, tracker = clients[2 * n], clients[2 * n + 1]
        async with gate:
            await tracked.connect()
            await tracker.connect()
            code = str(base + n)
            await tracked.emit("registerCode", code)
            await tracked.expect("codeRegistered")
            await tracker.emit("trackCode", code)
            token = (await tracker.expect("trackingStarted"))["sessionToken"]
            await tracked.emit("checkIn", token)
            await tracked.expect("checkInConfirmed")

    await asyncio.gather(*(pair(n) for n in range(count // 2)))
    return clients


async def one_run(servers: Servers, clients: int) -> dict[str, Any]:
    proc, url = await servers.start()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        opened = await setup(url, http, clients)
        await asyncio.sleep(0.5)
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            if os.environ.get("DRAIN_DEBUG"):
                subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], check=False)
            raise RuntimeError(f"no exit 60 s after SIGTERM:\n{servers.log_tail()}") from None
        exited = time.perf_counter()
        await asyncio.sleep(0.5)
        closed = [c for c in opened if c.ended == "close"]
        last_close = max((c.ended_at for c in closed), default=signalled)
        return {
            "drain_s": round(exited - signalled, 3),
            "last_client_closed_s": round(last_close - signalled, 3),
            "clients": len(opened),
            "saw_close": len(closed),
            "saw_server_disconnect": sum(c.ended == "disconnect" for c in opened),
            "still_open": sum(c.ended is None for c in opened),
            "exit_code": code,
        }
    finally:
        stop(proc, kill=True)
        await http.close()


async def main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    os.environ["SHUTDOWN_TIMEOUT"] = str(args.shutdown_timeout)
    os.environ["LOG_LEVEL"] = "INFO"
    results = []
    with tempfile.TemporaryDirectory(prefix="drain-") as workdir:
        servers = Servers(Path(workdir))
        try:
            redis = await servers.wait_redis()
            for n in range(args.runs):
                await redis.flushall()
                result = await one_run(servers, args.clients)
                results.append(result)
                print(f"run {n + 1}: {json.dumps(result)}", file=sys.stderr)
                log = servers.log_tail()
                if "Traceback" in log or "Shutting down with" in log:
                    print(log, file=sys.stderr)
            await redis.aclose()
        finally:
            servers.close()
    drains = sorted(r["drain_s"] for r in results)
    print(
        json.dumps(
            {
                "clients": args.clients,
                "shutdown_timeout_s": args.shutdown_timeout,
                "drain_s_median": statistics.median(drains),
                "drain_s_runs": drains,
                "saw_close": [r["saw_close"] for r in results],
                "saw_server_disconnect": [r["saw_server_disconnect"] for r in results],
                "exit_codes": [r["exit_code"] for r in results],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="even number of clients")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
