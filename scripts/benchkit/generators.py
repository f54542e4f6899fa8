"""The load, from our Python generator or from the real Node socket.io-client, behind one interface.

Both pair N pairs (tracked: registerCode; tracker: trackCode; tracked: setTimers), run a
closed loop of check-ins (the next checkIn when checkInConfirmed arrives) and open plain
connections to hold idle, over WebSocket, polling, or polling upgraded to WebSocket.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import random
import resource
import shutil
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from loadtest import CODES, Config, RawSocket, Run

from .polling import PollingSocket
from .processes import ROOT, process_cpu

MODES = ("websocket", "polling", "upgrade")  # upgrade: polling first, then WebSocket
LOADGEN = ROOT / "tests" / "node" / "loadgen.js"


@dataclass
class Outcome:
    """What one step of the load did: how many it managed, in how long, and what failed."""

    count: int
    seconds: float
    errors: dict[str, int]
    sent: int = 0
    received: int = 0
    # Pairing: the mean wait of each step, ms (the Node generator times them; ours does not).
    steps: dict[str, float] = dataclasses.field(default_factory=dict)


def stepped(reply: dict[str, Any], done: str) -> Outcome:
    """The Node generator's reply to a command timed step by step (pair, churn)."""
    return Outcome(reply[done], reply["seconds"], reply["errors"], steps=reply.get("steps", {}))


class Generator(Protocol):
    name: str

    async def pair(self, url: str, pairs: int, concurrency: int) -> Outcome: ...

    async def loop(self, duration: float) -> Outcome: ...

    async def open(self, url: str, count: int, concurrency: int, mode: str) -> Outcome: ...

    async def close(self) -> None: ...

    def cpu(self) -> float: ...

    async def stop(self) -> None: ...


class PythonGenerator:
    """scripts/loadtest.py's raw clients, in this process (its CPU counts as the generator's)."""

    name = "python"

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.sockets: list[RawSocket | PollingSocket] = []
        self.http: aiohttp.ClientSession | None = None

    async def pair(self, url: str, pairs: int, concurrency: int) -> Outcome:
        config = Config(
            url=url,
            pairs=pairs,
            timers=True,
            connect_concurrency=concurrency,
            timeout=20.0,
            progress=False,
        )
        run = Run(config, random.randrange(CODES))
        self.runs.append(run)
        seconds = await run.setup(pairs)
        errors = dict(run.stats.errors)
        run.stats.errors.clear()
        return Outcome(len(run.pairs), seconds, errors)

    async def loop(self, duration: float) -> Outcome:
        run = self.runs[-1]
        run.config = dataclasses.replace(run.config, duration=duration)
        part = await run.load(0, None)
        return Outcome(
            part["confirmed"], part["wall_s"], part["errors"], part["sent"], part["received"]
        )

    async def open(self, url: str, count: int, concurrency: int, mode: str) -> Outcome:
        if self.http is None:
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        http = self.http
        errors: collections.Counter[str] = collections.Counter()
        left, opened = count, 0
        started = asyncio.get_running_loop().time()

        async def opener() -> None:
            nonlocal left, opened
            while left > 0:
                left -= 1
                sock: RawSocket | PollingSocket
                if mode == "websocket":
                    sock = RawSocket(http, url, frozenset())
                else:
                    sock = PollingSocket(http, url, upgrade=mode == "upgrade")
                try:
                    await asyncio.wait_for(sock.connect(), 20)
                except Exception as exc:
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    await sock.close()
                    continue
                self.sockets.append(sock)
                opened += 1

        await asyncio.gather(*(opener() for _ in range(min(concurrency, count))))
        return Outcome(opened, asyncio.get_running_loop().time() - started, dict(errors))

    async def close(self) -> None:
        await asyncio.gather(*(run.close() for run in self.runs), return_exceptions=True)
        await asyncio.gather(*(sock.close() for sock in self.sockets), return_exceptions=True)
        self.runs, self.sockets = [], []
        if self.http is not None:
            await self.http.close()
            self.http = None

    def cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def stop(self) -> None:
        await self.close()


class NodeGenerator:
    """tests/node/loadgen.js: the real socket.io-client 4.8, in a Node process of its own."""

    name = "node"

    def __init__(self, proc: asyncio.subprocess.Process, version: str) -> None:
        self.proc = proc
        self.version = version
        self.transports: dict[str, list[str]] = {
            "websocket": ["websocket"],
            "polling": ["polling"],
            "upgrade": ["polling", "websocket"],
        }

    @classmethod
    async def start(cls) -> NodeGenerator:
        if not (LOADGEN.parent / "node_modules" / "socket.io-client").is_dir():
            raise RuntimeError("tests/node/node_modules is missing: run `npm ci` in tests/node")
        proc = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(LOADGEN),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        generator = cls(proc, "")
        ready = await generator._read(30)
        generator.version = ready["version"]
        return generator

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the Node generator exited ({self.proc.returncode})")
        message: dict[str, Any] = json.loads(line)
        if message["type"] == "failed":
            raise RuntimeError(f"the Node generator failed: {message['message']}")
        return message

    async def _command(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read(timeout)

    async def pair(self, url: str, pairs: int, concurrency: int) -> Outcome:
        reply = await self._command(
            600,
            op="pair",
            url=url,
            pairs=pairs,
            concurrency=concurrency,
            codeBase=random.randrange(CODES),
            timers=True,
            transports=["websocket"],
        )
        return stepped(reply, "paired")

    async def loop(self, duration: float) -> Outcome:
        reply = await self._command(duration + 60, op="loop", duration=duration, drain=2)
        return Outcome(
            reply["confirmed"], reply["seconds"], reply["errors"], reply["sent"], reply["received"]
        )

    async def churn(self, url: str, count: int, concurrency: int) -> Outcome:
        """`count` paired trackers drop and reconnect (reconnectSession) on new sockets."""
        churn = {"url": url, "count": count, "concurrency": concurrency}
        return stepped(
            await self._command(600, op="churn", transports=["websocket"], **churn), "churned"
        )

    async def open(self, url: str, count: int, concurrency: int, mode: str) -> Outcome:
        reply = await self._command(
            600,
            op="open",
            url=url,
            count=count,
            concurrency=concurrency,
            transports=self.transports[mode],
            upgrade=mode == "upgrade",
        )
        return Outcome(reply["opened"], reply["seconds"], reply["errors"])

    async def close(self) -> None:
        await self._command(60, op="close")

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op":"exit"}\n')
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_generator(name: str) -> Generator:
    if name == "node":
        return await NodeGenerator.start()
    return PythonGenerator()
