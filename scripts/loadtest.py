"""Load test: N pairs of Socket.IO clients check in against a server for a bounded time.

Each pair is a tracked client (registerCode with a unique 6-digit code) and a tracker
(trackCode); with --timers the tracked client then sets timers, as the apps do. Then every
tracked client checks in: at a total, paced --rate (check-ins per second), or with --rate 0 as
fast as they are confirmed (closed loop: the next checkIn goes out when checkInConfirmed
arrives). Latency is checkIn sent -> checkInConfirmed received; the trackers' checkInReceived
pushes are counted too. Progress goes to stderr every second; the report gives throughput,
latency percentiles, errors by message, and the generator's own CPU use, so that a saturated
generator is noticed (then add --procs).

    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:3000 --pairs 100 --duration 10
    .venv/bin/python scripts/loadtest.py --url https://<app>.up.railway.app --pairs 20 --rate 50

WebSocket clients are a minimal Socket.IO v4 client over aiohttp (cheap per message); polling
clients (--transport polling) are python-socketio's AsyncClient, several times dearer.
The server limits failed code attempts per client address; honest pairing never fails, and
the codes used are unique per run (a random base unless --code-base is given).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

CODES = 900_000  # 100000..999999
TIMERS = {"reminderTimeMinutes": 60, "alertTimeMinutes": 120}

OnEvent = Callable[[str, Any], Awaitable[None]]


@dataclass
class Config:
    url: str = "http://127.0.0.1:3000"
    pairs: int = 100
    rate: float = 0.0  # total check-ins per second; 0 = closed loop
    duration: float = 10.0
    transport: str = "websocket"
    timers: bool = False
    procs: int = 1
    connect_concurrency: int = 50
    timeout: float = 10.0  # per pairing step
    drain: float = 2.0  # wait for outstanding confirmations after the last send
    code_base: int | None = None
    progress: bool = True


# ------------------------------------------------------------------------ connections


def engineio_url(url: str, transport: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme
    if transport == "websocket":
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    path = parts.path.rstrip("/") + "/socket.io/"
    return urlunsplit((scheme, parts.netloc, path, f"EIO=4&transport={transport}", ""))


class Closed(Exception):
    """The connection went away."""


class RawSocket:
    """A minimal Socket.IO v4 client over one WebSocket: connect, emit, events, pings.

    Events in `cheap` are delivered without decoding their payload (None instead), which
    keeps the generator's cost per message low.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str, cheap: frozenset[str]) -> None:
        self._http = http
        self._url = engineio_url(url, "websocket")
        self._cheap = cheap
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.on_event: OnEvent | None = None
        self.on_close: Callable[[], None] | None = None
        self.sid: str | None = None

    async def connect(self) -> None:
        ws = await self._http.ws_connect(self._url, autoping=True, max_msg_size=1 << 20)
        self._ws = ws
        opened = await ws.receive_str()
        if not opened.startswith("0"):
            raise Closed(f"unexpected Engine.IO open packet {opened[:40]!r}")
        await ws.send_str("40")
        while True:
            packet = await ws.receive_str()
            if packet == "2":
                await ws.send_str("3")
                continue
            if packet.startswith("40"):
                self.sid = json.loads(packet[2:])["sid"]
                break
            raise Closed(f"Socket.IO connect refused: {packet[:80]!r}")
        self._reader = asyncio.create_task(self._read())

    def prepare(self, event: str, data: Any) -> str:
        return "42" + json.dumps([event, data], separators=(",", ":"))

    async def send(self, packet: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(packet)

    async def emit(self, event: str, data: Any) -> None:
        await self.send(self.prepare(event, data))

    async def _read(self) -> None:
        assert self._ws is not None
        ws, cheap = self._ws, self._cheap
        try:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                packet: str = message.data
                if packet.startswith("42"):
                    name = packet[4 : packet.index('"', 4)]
                    if self.on_event is not None:
                        data = None if name in cheap else _first_arg(packet[2:])
                        await self.on_event(name, data)
                elif packet == "2":
                    await ws.send_str("3")
                elif packet.startswith(("41", "1")):
                    break
        except (aiohttp.ClientError, OSError, ValueError):
            pass
        finally:
            if self.on_close is not None:
                self.on_close()

    async def close(self) -> None:
        self.on_close = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


def _first_arg(body: str) -> Any:
    items = json.loads(body)
    return items[1] if len(items) > 1 else None


class SioSocket:
    """python-socketio's AsyncClient behind RawSocket's interface (for HTTP long-polling)."""

    def __init__(self, url: str, transport: str) -> None:
        import socketio

        self._url = url
        self._transport = transport
        self._client = socketio.AsyncClient(reconnection=False)
        self.on_event: OnEvent | None = None
        self.on_close: Callable[[], None] | None = None

        async def any_event(event: str, data: Any = None) -> None:
            if self.on_event is not None:
                await self.on_event(event, data)

        def disconnected(*_: Any) -> None:
            if self.on_close is not None:
                self.on_close()

        self._client.on("*", any_event)
        self._client.on("disconnect", disconnected)

    async def connect(self) -> None:
        await self._client.connect(self._url, transports=[self._transport], wait_timeout=10)

    def prepare(self, event: str, data: Any) -> tuple[str, Any]:
        return event, data

    async def send(self, packet: tuple[str, Any]) -> None:
        await self._client.emit(*packet)

    async def emit(self, event: str, data: Any) -> None:
        await self._client.emit(event, data)

    async def close(self) -> None:
        self.on_close = None
        with contextlib.suppress(Exception):
            await self._client.disconnect()


Socket = RawSocket | SioSocket


# ------------------------------------------------------------------------------ load


@dataclass
class Stats:
    sent: int = 0
    confirmed: int = 0
    received: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # seconds

    def error(self, what: str) -> None:
        self.errors[what[:120]] += 1


class Pair:
    """A tracked client and its tracker, paired over one code."""

    def __init__(self, run: Run, code: str) -> None:
        self.run = run
        self.code = code
        self.tracked: Socket = run.socket(frozenset({"checkInConfirmed", "timersSet"}))
        self.tracker: Socket = run.socket(frozenset({"checkInReceived"}))
        self.token = ""
        self.packet: Any = None
        self.outstanding: collections.deque[float] = collections.deque()
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self.tracked.on_event = self._tracked_event
        self.tracker.on_event = self._tracker_event
        self.tracked.on_close = self.tracker.on_close = self._closed

    async def setup(self) -> None:
        run, timeout = self.run, self.run.config.timeout
        await asyncio.wait_for(self.tracked.connect(), timeout)
        registered = self._expect("codeRegistered")
        await self.tracked.emit("registerCode", self.code)
        await asyncio.wait_for(registered, timeout)
        await asyncio.wait_for(self.tracker.connect(), timeout)
        started = self._expect("trackingStarted")
        await self.tracker.emit("trackCode", self.code)
        self.token = (await asyncio.wait_for(started, timeout))["sessionToken"]
        if run.config.timers:
            timers = self._expect("timersSet")
            await self.tracked.emit("setTimers", {"sessionToken": self.token, **TIMERS})
            await asyncio.wait_for(timers, timeout)
        self.packet = self.tracked.prepare("checkIn", self.token)

    def _expect(self, event: str) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.waiting[event] = future
        return future

    async def check_in(self) -> None:
        self.outstanding.append(time.perf_counter())
        self.run.stats.sent += 1
        await self.tracked.send(self.packet)

    async def _tracked_event(self, event: str, data: Any) -> None:
        if event == "checkInConfirmed":
            await self._answered(True)
        elif event == "error":
            message = data if isinstance(data, str) else json.dumps(data)
            future = self.waiting.pop("codeRegistered", None) or self.waiting.pop("timersSet", None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"error: {message}"))
                return
            self.run.stats.error(f"error: {message}")
            if self.outstanding:
                await self._answered(False)
        else:
            self._wake(event, data)

    async def _answered(self, ok: bool) -> None:
        run = self.run
        if not self.outstanding:
            if ok:
                run.stats.error("unexpected checkInConfirmed")
            return
        sent_at = self.outstanding.popleft()
        if ok:
            run.stats.confirmed += 1
            run.stats.latencies.append(time.perf_counter() - sent_at)
        if run.closed_loop and run.sending:
            await self.check_in()

    async def _tracker_event(self, event: str, data: Any) -> None:
        if event == "checkInReceived":
            self.run.stats.received += 1
        elif event == "error":
            future = self.waiting.pop("trackingStarted", None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"error: {data}"))
            else:
                self.run.stats.error(f"tracker error: {data}")
        else:
            self._wake(event, data)

    def _wake(self, event: str, data: Any) -> None:
        future = self.waiting.pop(event, None)
        if future is not None and not future.done():
            future.set_result(data)

    def _closed(self) -> None:
        if self.run.sending:
            self.run.stats.error("disconnected during the load")
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(Closed("disconnected"))

    async def close(self) -> None:
        await asyncio.gather(self.tracked.close(), self.tracker.close())


class Run:
    """One generator process: sets its pairs up, then loads the server."""

    def __init__(self, config: Config, first_code: int) -> None:
        self.config = config
        self.first_code = first_code
        self.stats = Stats()
        self.pairs: list[Pair] = []
        self.sending = False
        self.closed_loop = config.rate <= 0
        self.http: aiohttp.ClientSession | None = None

    def socket(self, cheap: frozenset[str]) -> Socket:
        if self.config.transport == "websocket":
            assert self.http is not None
            return RawSocket(self.http, self.config.url, cheap)
        return SioSocket(self.config.url, self.config.transport)

    async def setup(self, count: int) -> float:
        """Pair `count` pairs; returns the seconds it took. Failures are counted as errors."""
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self.http = aiohttp.ClientSession(connector=connector)
        gate = asyncio.Semaphore(self.config.connect_concurrency)

        async def one(n: int) -> None:
            code = str(100_000 + (self.first_code + n) % CODES)
            pair = Pair(self, code)
            async with gate:
                try:
                    await pair.setup()
                except Exception as exc:
                    self.stats.error(f"pairing: {type(exc).__name__}: {exc}")
                    await pair.close()
                    return
            self.pairs.append(pair)

        await asyncio.gather(*(one(n) for n in range(count)))
        return time.perf_counter() - started

    async def load(self, rate: float, report: Callable[[Stats], None] | None) -> dict[str, Any]:
        """Check in for the configured duration; returns this process's figures."""
        config = self.config
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        self.sending = True
        ticker = asyncio.create_task(self._progress(report)) if report else None
        if not self.pairs:
            self.sending = False
        elif self.closed_loop:
            await asyncio.gather(*(pair.check_in() for pair in self.pairs))
            await asyncio.sleep(config.duration)
        else:
            await self._paced(rate, wall0 + config.duration)
        self.sending = False
        sending_s = time.perf_counter() - wall0
        deadline = time.perf_counter() + config.drain
        while time.perf_counter() < deadline and any(p.outstanding for p in self.pairs):
            await asyncio.sleep(0.01)
        if ticker is not None:
            ticker.cancel()
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        stats = self.stats
        return {
            "paired": len(self.pairs),
            "sent": stats.sent,
            "confirmed": stats.confirmed,
            "unconfirmed": sum(len(p.outstanding) for p in self.pairs),
            "received": stats.received,
            "errors": dict(stats.errors),
            "sending_s": sending_s,
            "cpu_s": cpu,
            "wall_s": wall,
            "latencies": stats.latencies,
        }

    async def _paced(self, rate: float, until: float) -> None:
        started = time.perf_counter()
        issued, turn, count = 0, 0, len(self.pairs)
        while (now := time.perf_counter()) < until:
            due = int((now - started) * rate) - issued
            for _ in range(due):
                await self.pairs[turn].check_in()
                turn = (turn + 1) % count
            issued += max(due, 0)
            next_at = started + (issued + 1) / rate
            await asyncio.sleep(max(0.0005, min(next_at, until) - time.perf_counter()))

    async def _progress(self, report: Callable[[Stats], None]) -> None:
        while True:
            await asyncio.sleep(1.0)
            report(self.stats)

    async def close(self) -> None:
        await asyncio.gather(*(pair.close() for pair in self.pairs), return_exceptions=True)
        if self.http is not None:
            await self.http.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ordered list."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# ------------------------------------------------------------------------ orchestration


class Progress:
    """One stderr line a second: totals and rates across every generator process."""

    def __init__(self, duration: float) -> None:
        self.started = time.perf_counter()
        self.last = (0, 0, self.started)
        self.duration = duration

    def line(self, sent: int, confirmed: int, received: int, errors: int, cpu_pct: float) -> None:
        now = time.perf_counter()
        rate = (confirmed - self.last[1]) / max(now - self.last[2], 1e-9)
        self.last = (sent, confirmed, now)
        print(
            f"[{now - self.started:5.1f}/{self.duration:.0f}s] sent {sent} confirmed {confirmed}"
            f" ({rate:,.0f}/s) received {received} errors {errors} generator cpu {cpu_pct:.0f}%",
            file=sys.stderr,
            flush=True,
        )


def summarize(config: Config, parts: list[dict[str, Any]], setup_s: float) -> dict[str, Any]:
    """Merge the figures of every generator process into the report."""
    latencies = sorted(x for part in parts for x in part["latencies"])
    errors: collections.Counter[str] = collections.Counter()
    for part in parts:
        errors.update(part["errors"])
    sending = max((part["sending_s"] for part in parts), default=0.0)
    wall = max((part["wall_s"] for part in parts), default=0.0)
    cpu = sum(part["cpu_s"] for part in parts)
    confirmed = sum(part["confirmed"] for part in parts)
    busiest = max((part["cpu_s"] / part["wall_s"] for part in parts if part["wall_s"]), default=0)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "url": config.url,
        "transport": config.transport,
        "mode": "closed loop" if config.rate <= 0 else f"paced {config.rate:g}/s",
        "pairs": config.pairs,
        "paired": sum(part["paired"] for part in parts),
        "timers": config.timers,
        "duration_s": round(sending, 3),
        "setup_s": round(setup_s, 3),
        "sent": sum(part["sent"] for part in parts),
        "confirmed": confirmed,
        "unconfirmed": sum(part["unconfirmed"] for part in parts),
        "received": sum(part["received"] for part in parts),
        "errors": dict(errors),
        "errors_total": sum(errors.values()),
        "throughput_per_s": round(confirmed / sending, 1) if sending else 0.0,
        "latency_ms": {
            "p50": ms(percentile(latencies, 50)),
            "p90": ms(percentile(latencies, 90)),
            "p99": ms(percentile(latencies, 99)),
            "max": ms(latencies[-1] if latencies else None),
        },
        "generator": {
            "procs": len(parts),
            "cpu_s": round(cpu, 3),
            "cpu_pct_of_one_core": round(100 * cpu / wall, 1) if wall else 0.0,
            "busiest_proc_pct": round(100 * busiest, 1),
            "saturated": busiest > 0.9,
        },
    }


Hook = Callable[[], Any]


async def run_load(
    config: Config, on_start: Hook | None = None, on_end: Hook | None = None
) -> dict[str, Any]:
    """Run the whole test (in this process, or in --procs worker processes) and report.

    `on_start` is called once every pair is set up, just before the first check-in, and
    `on_end` once the last confirmation is in, before any client disconnects: a benchmark
    measures the server between the two.
    """
    first_code = config.code_base if config.code_base is not None else random.randrange(CODES)
    if config.procs > 1:
        return await _run_workers(config, first_code, on_start, on_end)
    run = Run(config, first_code)
    progress = Progress(config.duration) if config.progress else None
    try:
        setup_s = await run.setup(config.pairs)
        if on_start:
            on_start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()

        def report(stats: Stats) -> None:
            assert progress is not None
            pct = 100 * (cpu_seconds() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
            progress.line(
                stats.sent, stats.confirmed, stats.received, sum(stats.errors.values()), pct
            )

        if progress:
            progress.started = time.perf_counter()
        part = await run.load(config.rate, report if progress else None)
        if on_end:
            on_end()
    finally:
        await run.close()
    return summarize(config, [part], setup_s)


async def _run_workers(
    config: Config, first_code: int, on_start: Hook | None, on_end: Hook | None
) -> dict[str, Any]:
    """Fork `procs` generator processes, start them together, merge their figures."""
    count = config.procs
    shares = [config.pairs // count + (1 if n < config.pairs % count else 0) for n in range(count)]
    offsets = [sum(shares[:n]) for n in range(count)]
    worker_config = {**asdict(config), "procs": 1, "progress": False}
    workers = []
    started = time.perf_counter()
    for n in range(count):
        spec = {
            **worker_config,
            "pairs": shares[n],
            "rate": config.rate * shares[n] / config.pairs if config.rate > 0 else 0.0,
            "code_base": first_code + offsets[n],
        }
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 30,  # the final line carries every latency
            )
        )
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = await asyncio.wait_for(worker.stdout.readline(), config.timeout * 10 + 60)
            if not line.startswith(b'{"ready"'):
                raise RuntimeError(f"a generator process failed to start: {line[:200]!r}")
        setup_s = time.perf_counter() - started
        if on_start:
            on_start()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        progress = Progress(config.duration) if config.progress else None
        latest: list[dict[str, Any]] = [{} for _ in workers]
        finals: list[dict[str, Any] | None] = [None] * count

        async def follow(n: int) -> None:
            stream = workers[n].stdout
            assert stream is not None
            async for line in stream:
                message = json.loads(line)
                if "progress" in message:
                    latest[n] = message["progress"]
                elif "final" in message:
                    finals[n] = message["final"]
                    return

        async def show() -> None:
            assert progress is not None
            await asyncio.sleep(0.2)  # the workers report on the second; show just after
            while True:
                await asyncio.sleep(1.0)
                total = collections.Counter[str]()
                for snapshot in latest:
                    total.update(snapshot)
                progress.line(
                    total["sent"],
                    total["confirmed"],
                    total["received"],
                    total["errors"],
                    total["cpu_pct"],
                )

        shower = asyncio.create_task(show()) if progress else None
        await asyncio.wait_for(
            asyncio.gather(*(follow(n) for n in range(count))),
            config.duration + config.drain + config.timeout * 2 + 30,
        )
        if shower:
            shower.cancel()
        if on_end:
            on_end()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"bye\n")
            await worker.stdin.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), 30)
        parts = [part for part in finals if part is not None]
        if len(parts) < count:
            raise RuntimeError(f"{count - len(parts)} generator processes gave no figures")
        return summarize(config, parts, setup_s)
    finally:
        for worker in workers:
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
                await worker.wait()


async def _worker(spec: str) -> None:
    """One generator process under --procs: pair, say ready, wait for go, load, report."""
    config = Config(**json.loads(spec))
    run = Run(config, config.code_base or 0)
    out = sys.stdout

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        await run.setup(config.pairs)
        send({"ready": len(run.pairs)})
        go = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if go.strip() != "go":
            return
        cpu0, wall0 = cpu_seconds(), time.perf_counter()

        def report(stats: Stats) -> None:
            pct = 100 * (cpu_seconds() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
            send(
                {
                    "progress": {
                        "sent": stats.sent,
                        "confirmed": stats.confirmed,
                        "received": stats.received,
                        "errors": sum(stats.errors.values()),
                        "cpu_pct": pct,
                    }
                }
            )

        part = await run.load(config.rate, report)
        send({"final": part})
        # Stay connected until the parent has its figures (it ends us), as in one process.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await run.close()


# ---------------------------------------------------------------------------------- CLI


def print_report(report: dict[str, Any]) -> None:
    latency = report["latency_ms"]
    generator = report["generator"]
    print(f"target          {report['url']} ({report['transport']}, {report['mode']})")
    print(f"pairs           {report['paired']}/{report['pairs']} paired in {report['setup_s']} s")
    print(f"sent            {report['sent']} in {report['duration_s']} s")
    print(f"confirmed       {report['confirmed']} ({report['unconfirmed']} unconfirmed)")
    print(f"received        {report['received']} checkInReceived at trackers")
    print(f"throughput      {report['throughput_per_s']:,} check-ins/s")
    print(
        "latency ms      "
        + "  ".join(f"{name} {value}" for name, value in latency.items() if value is not None)
    )
    print(f"errors          {report['errors_total']}")
    for message, count in sorted(report["errors"].items(), key=lambda item: -item[1]):
        print(f"  {count:>8}  {message}")
    print(
        f"generator cpu   {generator['cpu_s']} s, {generator['cpu_pct_of_one_core']}% of one core"
        f" over {generator['procs']} process(es)"
    )
    if generator["saturated"]:
        print(
            "warning: a generator process used over 90% of a core: the figures may be the "
            "generator's limit, not the server's (try --procs 2)"
        )


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=Config.url, help="server base URL (http:// or https://)")
    parser.add_argument("--pairs", type=int, default=Config.pairs, help="tracked+tracker pairs")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="total check-ins per second; 0 = closed loop"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (max 600)")
    parser.add_argument("--transport", choices=["websocket", "polling"], default="websocket")
    parser.add_argument("--timers", action="store_true", help="setTimers after pairing")
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument("--connect-concurrency", type=int, default=Config.connect_concurrency)
    parser.add_argument("--timeout", type=float, default=Config.timeout, help="per pairing step")
    parser.add_argument("--code-base", type=int, default=None, help="first code (0-899999)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.pairs > CODES or args.procs < 1 or args.rate < 0:
        parser.error("need 1 <= --pairs <= 900000, --procs >= 1 and --rate >= 0")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600] seconds")
    config = Config(
        url=args.url.rstrip("/"),
        pairs=args.pairs,
        rate=args.rate,
        duration=args.duration,
        transport=args.transport,
        timers=args.timers,
        procs=args.procs,
        connect_concurrency=args.connect_concurrency,
        timeout=args.timeout,
        code_base=args.code_base,
        progress=not args.quiet,
    )
    return config, args.json


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    raise_fd_limit()
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(_worker(sys.argv[2]))
        return 0
    config, as_json = parse_args()
    report = asyncio.run(run_load(config))
    if as_json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if report["confirmed"] > 0 and not report["errors_total"] else 1


if __name__ == "__main__":
    sys.exit(main())
