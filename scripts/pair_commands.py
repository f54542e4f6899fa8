"""What one pairing asks of Redis: every command, and the round trips, step by step.

Starts a private redis-server and the server in this process (the app factory, Redis on, the
benchmark's raised per-address quotas unless --default-quotas), pairs --pairs pairs one at a
time over WebSocket (tracked connects and registerCode, tracker connects and trackCode, tracked
setTimers; then both hang up), and counts what each step sent to Redis: the round trips (each
write of commands to a socket: a pipeline is one), the commands they carried, and the commands
the scripts ran inside Redis (MONITOR's "lua" lines). The heartbeat's own traffic (its own
connection) is left out. Deterministic: a figure for a change, where CPU times are noise.

    .venv/bin/python scripts/pair_commands.py               # 20 pairs, a table per step
    .venv/bin/python scripts/pair_commands.py --list        # + every command of the last pair
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from benchkit.processes import RAISED_QUOTAS, ROOT, Servers, free_port
from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

sys.path.insert(0, str(ROOT))

from server import redislane
from server import settings as settings_module
from server.app import create_app

STEPS = ("connect", "registerCode", "trackCode", "setTimers", "disconnect")
_MONITOR_LINE = re.compile(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"(.*)$')


# Tasks that work on their own schedule, not for an event (the deadline claimer, the relay).
BACKGROUND: Final = frozenset({"alerts", "relay-listener", "sweeper", "crash-sweeper", "pings"})


class Counter:
    """Round trips and commands sent by the server's Redis clients, per step."""

    def __init__(self) -> None:
        self.step = "start"
        self.round_trips: collections.Counter[str] = collections.Counter()
        self.commands: collections.Counter[str] = collections.Counter()
        self.sent: dict[str, list[str]] = collections.defaultdict(list)
        self.beat_connections: set[int] = set()

    def install(self) -> None:
        self._install_pool()
        self._install_lane()

    def _count(self, conn: object, payload: bytes) -> None:
        names = _command_names(payload)
        if b"instances" in payload and b"data-marker" in payload:
            self.beat_connections.add(id(conn))
        task = asyncio.current_task()
        background = task is not None and task.get_name() in BACKGROUND
        if (
            id(conn) not in self.beat_connections
            and names[0] not in ("PING", "ECHO", "HELLO", "CLIENT")  # not a connection's set-up
            and not background
        ):
            self.round_trips[self.step] += 1
            self.commands[self.step] += len(names)
            self.sent[self.step].append(_described(payload))

    def _install_lane(self) -> None:
        """The per-event scripts' own connection (server/redislane.py): one write per command."""
        counter = self
        original = redislane._Pipe.send

        def send(pipe: redislane._Pipe, command: bytes) -> asyncio.Future[Any]:
            counter._count(pipe, command)
            return original(pipe, command)

        redislane._Pipe.send = send  # type: ignore[method-assign]

    def _install_pool(self) -> None:
        counter = self
        original = AbstractConnection.send_packed_command

        async def send_packed_command(
            conn: AbstractConnection, command: Any, check_health: bool = True
        ) -> None:
            chunks = [command] if isinstance(command, (bytes, str)) else list(command)
            payload = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
            counter._count(conn, payload)
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def _commands(payload: bytes) -> list[list[bytes]]:
    """The commands in a RESP payload (arrays of bulk strings)."""
    commands, i = [], 0
    while i < len(payload) and payload[i : i + 1] == b"*":
        end = payload.index(b"\r\n", i)
        count = int(payload[i + 1 : end])
        i = end + 2
        command = []
        for _ in range(count):
            end = payload.index(b"\r\n", i)
            size = int(payload[i + 1 : end])
            command.append(payload[end + 2 : end + 2 + size])
            i = end + 2 + size + 2
        commands.append(command)
    return commands


def _command_names(payload: bytes) -> list[str]:
    return [command[0].decode().upper() for command in _commands(payload)]


def _described(payload: bytes) -> str:
    """Each command with the pattern of its first key (digits and tokens shortened)."""
    parts = []
    for command in _commands(payload):
        name = command[0].decode().upper()
        key = b""
        if name == "EVALSHA" and len(command) > 3:
            key = command[3]
        elif name not in ("SCRIPT",) and len(command) > 1:
            key = command[1]
        shown = re.sub(r"[0-9a-f]{64}", "<token>", key.decode(errors="replace"))
        shown = re.sub(r"[0-9a-f]{8}\.[\w-]+", "<sid>", shown)
        shown = re.sub(r"\d{6,}", "<n>", shown)
        parts.append(f"{name} {shown}".strip())
    return " | ".join(parts)


class Socket:
    """A bare Socket.IO client over one WebSocket: enough to pair."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._ws = await self._http.ws_connect(self._url)
        await self._ws.receive_str()
        await self._ws.send_str("40")
        while not (await self._ws.receive_str()).startswith("40"):
            pass
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            packet = message.data
            if isinstance(packet, str) and packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                await self.events.put((name, args[0] if args else None))
            elif packet == "2":
                await self._ws.send_str("3")

    async def emit(self, event: str, data: Any) -> None:
        assert self._ws is not None
        await self._ws.send_str("42" + json.dumps([event, data]))

    async def expect(self, event: str) -> Any:
        while True:
            name, data = await asyncio.wait_for(self.events.get(), 5)
            if name == event:
                return data
            if name == "error":
                raise RuntimeError(f"{event}: error {data!r}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()


MARKER: list[Any] = []  # the client that marks each step in MONITOR's stream


async def settle(counter: Counter, step: str) -> None:
    """Let the step's background work (writes after the reply) finish before the next."""
    await asyncio.sleep(0.05)
    counter.step = step
    if MARKER:
        await MARKER[0].echo(f"step:{step}")


async def pair_one(
    http: aiohttp.ClientSession, url: str, code: int, counter: Counter
) -> tuple[Socket, Socket]:
    tracked, tracker = Socket(http, url), Socket(http, url)
    await settle(counter, "connect")
    await tracked.connect()
    await tracker.connect()
    await settle(counter, "registerCode")
    await tracked.emit("registerCode", str(code))
    await tracked.expect("codeRegistered")
    await settle(counter, "trackCode")
    await tracker.emit("trackCode", str(code))
    token = (await tracker.expect("trackingStarted"))["sessionToken"]
    await tracked.expect("trackerConnected")
    await settle(counter, "setTimers")
    timers = {"sessionToken": token, "reminderTimeMinutes": 60, "alertTimeMinutes": 120}
    await tracked.emit("setTimers", timers)
    await tracked.expect("timersSet")
    await settle(counter, "disconnect")
    await tracked.close()
    await tracker.close()
    await settle(counter, "idle")
    return tracked, tracker


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--list", action="store_true", help="every command of the last pair")
    parser.add_argument("--default-quotas", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pair-commands-"))
    servers = Servers(workdir)  # a private redis-server
    redis_port = servers.redis_port
    monitor: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(0.3)
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "LOG_LEVEL": "WARNING"}
        if not args.default_quotas:
            env.update(RAISED_QUOTAS)
        app = create_app(settings_module.load(env))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        counter = Counter()
        counter.install()
        async with aiohttp.ClientSession() as http:
            await pair_one(http, url, 100000, counter)  # warm-up: scripts loaded, pools filled
            counter.round_trips.clear()
            counter.commands.clear()
            counter.sent.clear()
            log = (workdir / "monitor.log").open("wb")
            monitor = subprocess.Popen(
                [shutil.which("redis-cli") or "redis-cli", "-p", str(redis_port), "MONITOR"],
                stdout=log,
            )
            await asyncio.sleep(0.3)
            MARKER.append(aioredis.Redis(port=redis_port))
            for n in range(args.pairs):
                if n == args.pairs - 1:
                    counter.sent.clear()
                await pair_one(http, url, 100001 + n, counter)
            await asyncio.sleep(0.3)
            monitor.terminate()
            monitor.wait()
            log.close()
        await runner.cleanup()
        counts, last_pair = _inner_commands(workdir / "monitor.log")
        inner = {step: count / args.pairs for step, count in counts.items()}
        result = {
            step: {
                "round_trips": counter.round_trips[step] / args.pairs,
                "commands": counter.commands[step] / args.pairs,
            }
            for step in STEPS
        }
        per_pair = {
            "round_trips": sum(counter.round_trips[s] for s in STEPS[:4]) / args.pairs,
            "commands_sent": sum(counter.commands[s] for s in STEPS[:4]) / args.pairs,
        }
        if args.json:
            print(json.dumps({"steps": result, "pair": per_pair, "inner": inner}))
            return
        print(f"{args.pairs} pairs, one at a time; per pair (heartbeat traffic left out):")
        print(f"{'step':<14}{'round trips':>12}{'commands':>10}")
        for step, figures in result.items():
            print(f"{step:<14}{figures['round_trips']:>12.2f}{figures['commands']:>10.2f}")
        print(
            f"pairing (connect..setTimers): {per_pair['round_trips']:.2f} round trips, "
            f"{per_pair['commands_sent']:.2f} commands sent"
        )
        executed = sum(inner.get(step, 0) for step in STEPS[:4])
        print(
            "Redis commands executed per pair, scripts' included (MONITOR): "
            + ", ".join(f"{step} {inner.get(step, 0):.2f}" for step in STEPS)
            + f"; pairing {executed:.2f}"
        )
        if args.list:
            print("\nthe last pair's round trips:")
            for step in STEPS:
                for sent in counter.sent.get(step, []):
                    print(f"  {step:<13} {sent}")
            print("\nthe last pair's commands as Redis ran them (MONITOR):")
            for step in STEPS:
                for line in last_pair.get(step, []):
                    print(f"  {step:<13} {line}")
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.terminate()
        servers.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _inner_commands(path: Path) -> tuple[collections.Counter[str], dict[str, list[str]]]:
    """Per step, every command MONITOR saw, the scripts' included, less the heartbeat's, the
    alerts' claims and PINGs; and those of the last pair."""
    counts: collections.Counter[str] = collections.Counter()
    last: dict[str, list[str]] = collections.defaultdict(list)
    step, skip = "start", False
    for line in path.read_text(errors="replace").splitlines():
        match = _MONITOR_LINE.match(line)
        if match is None:
            continue
        source, name, rest = match.groups()
        if source != "lua":
            if name.upper() == "ECHO":
                step = rest.strip().strip('"').removeprefix("step:")
                if step == "connect":
                    last.clear()
                skip = True
                continue
            skip = (
                ('"instances"' in rest and '"data-marker"' in rest)  # the heartbeat
                or '"deadlines:leased"' in rest  # the alerts' claim, on its own schedule
                or name.upper() == "PING"
            )
        if not skip and name.upper() not in ("HELLO", "CLIENT"):
            counts[step] += 1
            shown = f"{'  (script) ' if source == 'lua' else ''}{name.upper()}{_keys(rest)}"
            last[step].append(shown)
    return counts, last


def _keys(rest: str) -> str:
    """A MONITOR line's arguments, tokens and numbers shortened, values cut."""
    words = re.findall(r'"((?:[^"\\]|\\.)*)"', rest)[:3]
    shown = []
    for word in words:
        if word.startswith("{") or len(word) > 80:
            word = "<json>"
        word = re.sub(r"[0-9a-f]{64}", "<token>", word)
        word = re.sub(r"^[0-9a-f]{40}$", "<script>", word)
        word = re.sub(r"[0-9a-f]{8}\.[\w-]+", "<sid>", word)
        word = re.sub(r"\d{6,}", "<n>", word)
        shown.append(word)
    return (" " + " ".join(shown)) if shown else ""


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
