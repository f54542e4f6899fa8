"""Hostile clients against an All Is Well server: each attack of issue 11, bounded, with a verdict.

    .venv/bin/python scripts/abuse.py http://127.0.0.1:3000 [--only squat ...] [--scale full]
        [--pid PID] [--log FILE] [--json]

Every attack runs against the server at URL (ours or the Node server), from loopback only: the
attacker and the honest clients speak from different loopback source addresses (Linux routes the
whole 127.0.0.0/8 to lo), 127.R.A.H with R random per run, A the attack and H the client, so the
server tells them apart as it would tell phones apart, with no proxy header, and one run's
counts per address do not spill into the next. Each attack stops by itself: seconds at
`--scale small`, at most about a minute at `--scale full`.

The verdict is about outcomes, not error strings, so that it is fair to any server: was a session
token obtained, were the honest clients served (a bystander's check-in within BYSTANDER_LIMIT_MS,
legitimate apps got codes, the app got its session back), did the server's memory stay bounded
(VmRSS of --pid; found from the listening port when not given), was the flood cut off. The table
gives the figure that decides each verdict and what the server answered the attacker.

    defended     the attack failed and honest clients were served
    VULNERABLE   the attack worked (a token, a squatted code space, a starved bystander, ...)
    BROKEN       the attack failed, but so did the honest flow it must leave alone
    n.a.         cannot be decided here (no --log for the log flood; no RSS for a memory attack)

What decides each (besides a bystander's check-in within BYSTANDER_LIMIT_MS, in every attack):

    token-from-code          no token for two other addresses naming a dropped app's code; a sweep
                             of random codes gets at most 10% accepted; the app back from its own
                             address gets its session back (else BROKEN)
    squat                    every app elsewhere gets a code within 3 tries among the squatter's,
                             and the squatter cannot take one of theirs over
    binary-attachments       the packet refused (an error, a hang-up, or no more read), RSS
                             growth bounded
    trackers-per-session     at most half of the trackers accepted; GET / answered while they leave
    events-in-flight         RSS growth < RSS_BOUND_MB; a client that does not read is closed, or
                             the server itself holds at most HOARD_BYTES of its replies
    log-flood                at most 50 lines for the whole flood
    connections-per-address  fewer than 80% of the unfinished connections held; another address
                             pairs meanwhile
    roles                    checkIn, setTimers and reconnectSession as tracked refused to a
                             tracker's socket; the tracked person's own check-in confirmed

Exit code 0 when every attack run was defended, 1 otherwise (n.a. too: it proves nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import os
import random
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import socketio

DEFENDED: Final = "defended"
VULNERABLE: Final = "VULNERABLE"
BROKEN: Final = "BROKEN"
NOT_APPLICABLE: Final = "n.a."

#: A bystander's check-in slower than this (or unanswered) means the attack denied service.
BYSTANDER_LIMIT_MS: Final = 2_000.0
#: How long any single reply is waited for.
REPLY_TIMEOUT: Final = 5.0
#: Requests an attacker keeps unanswered at once in a sweep: below any sane in-flight quota, so
#: that what is measured is the server's answer to each request, not a pile-up.
WINDOW: Final = 8
TIMERS_MAX_MINUTES: Final = 43_200


@dataclass(frozen=True)
class Scale:
    name: str
    sweep: int  # attack 1: registerCode of random codes from one address
    squat: int  # attack 2: codes the squatter tries to hold
    squat_sockets: int
    legit_apps: int
    attachment_bytes: int  # attack 3
    trackers: int  # attack 4
    burst: int  # attack 5: checkIn from one socket
    unread: int  # attack 5: getStatus from another that never reads
    log_flood: int  # attack 6: abusive messages
    connections: int  # attack 7: above the default CONNECTIONS_PER_ADDRESS (200)
    seconds: float  # every flood stops after this long, done or not


SCALES: Final = {
    "small": Scale("small", 3_000, 2_000, 2, 20, 20 << 20, 300, 20_000, 60_000, 2_000, 300, 20.0),
    "full": Scale(
        "full", 50_000, 20_000, 10, 200, 200 << 20, 2_000, 100_000, 300_000, 20_000, 500, 60.0
    ),
}


@dataclass
class Result:
    attack: str
    verdict: str
    figure: str  # what decides the verdict
    answered: str  # what the server answered the attacker
    details: dict[str, Any] = field(default_factory=dict)
    bystander_ms: float | None = None  # the slowest check-in of someone else meanwhile


@dataclass
class Target:
    """The server under attack, and where this run's clients speak from."""

    url: str
    scale: Scale
    pid: int | None = None
    log: Path | None = None
    run: int = field(default_factory=lambda: random.randint(1, 254))
    rng: random.Random = field(default_factory=random.Random)
    _codes: set[str] = field(default_factory=set)

    def address(self, attack: int, host: int) -> str:
        """The loopback address of client `host` in attack number `attack`."""
        return f"127.{self.run}.{attack}.{host}"

    def code(self) -> str:
        """A random 6-digit code never handed out before in this run."""
        while (code := str(self.rng.randint(100_000, 999_999))) in self._codes:
            pass
        self._codes.add(code)
        return code

    def rss_kb(self) -> int | None:
        if self.pid is None:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) if match else None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


# ------------------------------------------------------------------------------- clients


def _session(address: str) -> aiohttp.ClientSession:
    """An HTTP session whose connections all start from `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector)


class Client:
    """python-socketio's AsyncClient (a real Socket.IO client) speaking from one address;
    every event it receives is queued for `expect`."""

    def __init__(self, url: str, address: str) -> None:
        self.url = url
        self.address = address
        self._http = _session(address)
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self._http)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.sio.on("*", self._on_event)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_event(self, event: str, *args: Any) -> None:
        self.events.put_nowait((event, args[0] if args else None))

    async def _on_disconnect(self, *_: Any) -> None:
        self.gone.set()

    @classmethod
    async def open(cls, url: str, address: str, timeout: float = 10.0) -> Client:
        client = cls(url, address)
        try:
            await client.sio.connect(url, transports=["websocket"], wait_timeout=timeout)
        except BaseException:
            await client._http.close()
            raise
        return client

    async def emit(self, event: str, data: Any) -> None:
        await self.sio.emit(event, data)

    async def expect(self, *names: str, timeout: float = REPLY_TIMEOUT) -> tuple[str, Any] | None:
        """The next event named in `names` (others are skipped); None on a timeout or when the
        server hung up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.events.empty() and self.gone.is_set():
                return None
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                event, data = await asyncio.wait_for(self._next(), left)
            except TimeoutError:
                return None
            if event in names:
                return event, data

    async def _next(self) -> tuple[str, Any]:
        get = asyncio.ensure_future(self.events.get())
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if get.done():
            return get.result()
        get.cancel()
        raise TimeoutError  # hung up

    async def request(
        self, event: str, data: Any, *replies: str, timeout: float = REPLY_TIMEOUT
    ) -> tuple[str, Any] | None:
        """Emit, then the first reply among `replies` or `error`."""
        await self.emit(event, data)
        return await self.expect(*replies, "error", timeout=timeout)

    async def drop(self) -> None:
        """The phone loses its connection: the TCP connection goes, no goodbye is said."""
        await self._http.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), 5)
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 5)
        await self._http.close()


def engineio_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/socket.io/"
    return urlunsplit((scheme, parts.netloc, path, "EIO=4&transport=websocket", ""))


class Closed(Exception):
    """The server refused or ended the connection."""


class RawSocket:
    """Socket.IO v4 by hand over one aiohttp WebSocket: for what a library client would not send
    (declared attachments, malformed packets) or would read when the attacker does not."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, own_http: aiohttp.ClientSession | None
    ) -> None:
        self.ws = ws
        self._own_http = own_http  # closed with the socket
        self.replies: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.received_bytes = 0  # of Socket.IO events
        self.closed_by_server = False
        self.reply = asyncio.Event()  # set at each reply
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, source: str | aiohttp.ClientSession, *, read: bool = True
    ) -> RawSocket:
        """Connected to the main namespace from `source` (an address, or an HTTP session shared
        with other sockets); with `read`, replies are counted as they come, else nothing is read
        after the handshake (the connection's buffers fill up)."""
        own = isinstance(source, str)
        session = _session(source) if isinstance(source, str) else source
        try:
            ws = await session.ws_connect(
                engineio_url(url),
                autoping=True,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(10),
            )
            opened = await asyncio.wait_for(ws.receive_str(), REPLY_TIMEOUT)
            if not opened.startswith("0"):
                raise Closed(f"unexpected Engine.IO open packet {opened[:60]!r}")
            await ws.send_str("40")
            while (packet := await asyncio.wait_for(ws.receive_str(), REPLY_TIMEOUT)) == "2":
                await ws.send_str("3")
            if not packet.startswith("40"):
                raise Closed(f"Socket.IO connect refused: {packet[:80]!r}")
        except (aiohttp.ClientError, OSError, TypeError, TimeoutError) as exc:
            if own:
                await session.close()
            raise Closed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            if own:
                await session.close()
            raise
        raw = cls(ws, session if own else None)
        if read:
            raw.start_reading()
        return raw

    def start_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    packet: str = message.data
                    if packet == "2":
                        await self.ws.send_str("3")
                    elif packet.startswith("42"):
                        self.received_bytes += len(packet)
                        name, data = _event(packet[2:])
                        self.replies[name] += 1
                        if name == "error":
                            self.errors[str(data)[:120]] += 1
                        self.reply.set()
                    elif packet.startswith(("41", "1")):
                        break
                elif message.type is not aiohttp.WSMsgType.BINARY:
                    break
        except (aiohttp.ClientError, OSError, ValueError):
            pass
        self.closed_by_server = True
        self.reply.set()

    async def send(self, packet: str | bytes, timeout: float = REPLY_TIMEOUT) -> None:
        """One frame; Closed when the connection is gone or takes no more for `timeout` s."""
        if self.ws.closed:
            raise Closed("closed")
        try:
            if isinstance(packet, bytes):
                await asyncio.wait_for(self.ws.send_bytes(packet), timeout)
            else:
                await asyncio.wait_for(self.ws.send_str(packet), timeout)
        except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
            raise Closed(f"{type(exc).__name__}") from exc

    async def emit(self, event: str, data: Any) -> None:
        await self.send("42" + json.dumps([event, data], separators=(",", ":")))

    async def read_to_end(self, quiet: float) -> bool:
        """Read what the server queued until it goes quiet for `quiet` s; True when the server
        ended the connection."""
        self.start_reading()
        assert self._reader is not None
        while not self._reader.done():
            self.reply.clear()
            try:
                await asyncio.wait_for(self.reply.wait(), quiet)
            except TimeoutError:
                break
        return self.closed_by_server

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        if self._own_http is not None:
            await self._own_http.close()


def _event(body: str) -> tuple[str, Any]:
    try:
        items = json.loads(body)
    except ValueError:
        return "?", None
    if not isinstance(items, list) or not items:
        return "?", None
    return str(items[0]), items[1] if len(items) > 1 else None


# ------------------------------------------------------------------------- honest flows


@dataclass
class Pair:
    tracked: Client
    tracker: Client
    code: str
    token: str

    async def close(self) -> None:
        await asyncio.gather(self.tracked.close(), self.tracker.close())


async def register(target: Target, client: Client, tries: int = 3) -> str | None:
    """The app's registerCode: a fresh code, another one after `Code already in use`."""
    for _ in range(tries):
        code = target.code()
        reply = await client.request("registerCode", code, "codeRegistered")
        if reply is not None and reply[0] == "codeRegistered":
            return code
    return None


async def pair(target: Target, tracked_at: str, tracker_at: str) -> Pair:
    """A tracked app and its tracker, each from its own address."""
    tracked = await Client.open(target.url, tracked_at)
    tracker = await Client.open(target.url, tracker_at)
    code = await register(target, tracked)
    if code is None:
        await asyncio.gather(tracked.close(), tracker.close())
        raise RuntimeError(f"the tracked app at {tracked_at} could not register a code")
    reply = await tracker.request("trackCode", code, "trackingStarted")
    if reply is None or reply[0] != "trackingStarted":
        await asyncio.gather(tracked.close(), tracker.close())
        raise RuntimeError(f"the tracker at {tracker_at} could not pair: {reply!r}")
    await tracked.expect("trackerConnected")
    return Pair(tracked, tracker, code, reply[1]["sessionToken"])


async def check_in(client: Client, token: str, timeout: float = REPLY_TIMEOUT) -> float | None:
    """Milliseconds from checkIn to checkInConfirmed; None when it is not confirmed."""
    started = time.perf_counter()
    reply = await client.request("checkIn", token, "checkInConfirmed", timeout=timeout)
    if reply is None or reply[0] != "checkInConfirmed":
        return None
    return (time.perf_counter() - started) * 1000


class Bystander:
    """Someone else's session on the same server, checking in while the attack runs."""

    def __init__(self, pairing: Pair) -> None:
        self.pair = pairing
        self.latencies: list[float | None] = []

    @classmethod
    async def start(cls, target: Target, attack: int) -> Bystander:
        return cls(await pair(target, target.address(attack, 250), target.address(attack, 251)))

    async def check_in(self) -> float | None:
        latency = await check_in(self.pair.tracked, self.pair.token)
        self.latencies.append(latency)
        return latency

    @contextlib.asynccontextmanager
    async def sampling(self, every: float = 0.2) -> AsyncIterator[None]:
        """Check in over and over (one at a time) while the block runs; the check-in under
        way when it ends is waited for (it may be the slow one)."""
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                await self.check_in()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            stop.set()
            await task

    @property
    def worst_ms(self) -> float | None:
        """The slowest check-in; None when one went unanswered (or none was made)."""
        if not self.latencies or any(value is None for value in self.latencies):
            return None
        return max(value for value in self.latencies if value is not None)

    @property
    def served(self) -> bool:
        worst = self.worst_ms
        return worst is not None and worst <= BYSTANDER_LIMIT_MS

    def figure(self) -> str:
        answered = [value for value in self.latencies if value is not None]
        missed = len(self.latencies) - len(answered)
        if not answered:
            return "bystander check-in unanswered"
        text = f"bystander check-in worst {max(answered):,.0f} ms of {len(self.latencies)}"
        return text + (f", {missed} unanswered" if missed else "")

    async def close(self) -> None:
        await self.pair.close()


class Memory:
    """The server's peak VmRSS while a block runs (needs its pid)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.before = target.rss_kb()
        self.peak = self.before

    @property
    def growth_mb(self) -> float | None:
        if self.before is None or self.peak is None:
            return None
        return (self.peak - self.before) / 1024

    @contextlib.asynccontextmanager
    async def watching(self, every: float = 0.1) -> AsyncIterator[Memory]:
        async def loop() -> None:
            while True:
                rss = self.target.rss_kb()
                if rss is not None and self.peak is not None:
                    self.peak = max(self.peak, rss)
                await asyncio.sleep(every)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def figure(self) -> str:
        growth = self.growth_mb
        return "server RSS not measured" if growth is None else f"server RSS +{growth:,.0f} MB"


def answered(counts: collections.Counter[str]) -> str:
    """The server's commonest answers to the attacker, for the table."""
    if not counts:
        return "nothing"
    return "; ".join(f"{text} x{n:,}" for text, n in counts.most_common(2))


def token_in(reply: tuple[str, Any] | None) -> str | None:
    """The sessionToken a codeRegistered reply handed out, if any."""
    if reply is None or reply[0] != "codeRegistered" or not isinstance(reply[1], dict):
        return None
    token = reply[1].get("sessionToken")
    return token if isinstance(token, str) else None


def describe(reply: tuple[str, Any] | None) -> str:
    if reply is None:
        return "no reply"
    name, data = reply
    if name == "error":
        return f"error {data!r}"
    if name == "codeRegistered" and isinstance(data, dict) and "sessionToken" in data:
        return "codeRegistered with the sessionToken"
    return name


@dataclass
class Sweep:
    """registerCode of many codes from one socket, WINDOW at a time."""

    tried: int = 0
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    unanswered: int = 0
    hung_up: bool = False
    answers: collections.Counter[str] = field(default_factory=collections.Counter)


async def sweep(client: Client, codes: Sequence[str], deadline: float) -> Sweep:
    """Try to register every code in `codes` (stops at `deadline`, loop time, or a hang-up)."""
    result = Sweep()
    loop = asyncio.get_running_loop()
    pending: collections.deque[str] = collections.deque()
    queue = iter(codes)
    exhausted = False
    while True:
        while not exhausted and len(pending) < WINDOW and loop.time() < deadline:
            code = next(queue, None)
            if code is None:
                exhausted = True
                break
            try:
                await client.emit("registerCode", code)
            except Exception:
                result.hung_up = True
                exhausted = True
                break
            pending.append(code)
            result.tried += 1
        if not pending:
            break
        reply = await client.expect("codeRegistered", "error")
        if reply is None:
            result.unanswered += len(pending)
            result.hung_up = client.gone.is_set()
            break
        code = pending.popleft()
        name, data = reply
        if name == "codeRegistered":
            result.accepted.append(str(data.get("code", code)) if isinstance(data, dict) else code)
            result.answers["codeRegistered"] += 1
        else:
            result.refused += 1
            result.answers[f"error {data!r}"] += 1
        if loop.time() >= deadline:
            exhausted = True
    return result


def percent(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,}"


# ------------------------------------------------------------------------------ attacks

Attack = Callable[[Target], Awaitable[Result]]


async def token_from_code(target: Target) -> Result:
    """1. A paired code whose app dropped: does naming it hand out the session token?"""
    attack = 1
    bystander = await Bystander.start(target, attack)
    victim = await pair(target, target.address(attack, 1), target.address(attack, 2))
    await victim.tracked.drop()
    await victim.tracker.expect("trackedPersonDisconnected", timeout=3)
    attackers: list[Client] = []
    obtained = 0
    answers: collections.Counter[str] = collections.Counter()
    try:
        for host in (10, 11):  # two addresses that never failed an attempt before
            attacker = await Client.open(target.url, target.address(attack, host))
            attackers.append(attacker)
            reply = await attacker.request("registerCode", victim.code, "codeRegistered")
            answers[describe(reply)] += 1
            obtained += token_in(reply) == victim.token
        sweeper = await Client.open(target.url, target.address(attack, 20))
        attackers.append(sweeper)
        codes = [target.code() for _ in range(target.scale.sweep)]
        loop = asyncio.get_running_loop()
        swept = await sweep(sweeper, codes, loop.time() + target.scale.seconds)
        # The honest path: the app, back from its own address, takes its session back.
        app = await Client.open(target.url, target.address(attack, 1))
        attackers.append(app)
        reply = await app.request("registerCode", victim.code, "codeRegistered")
        resumed = token_in(reply) == victim.token
        await bystander.check_in()
    finally:
        await asyncio.gather(*(client.close() for client in attackers))
        await asyncio.gather(victim.tracker.close(), bystander.close())
    accepted = len(swept.accepted)
    figure = (
        f"tokens obtained {obtained} of {sum(answers.values())}; "
        f"sweep accepted {percent(accepted, swept.tried)} (refused {swept.refused:,}"
        f"{', hung up' if swept.hung_up else ''}); own app resumed: {'yes' if resumed else 'no'}"
        f"; {bystander.figure()}"
    )
    if obtained or accepted > swept.tried // 10 or not bystander.served:
        verdict = VULNERABLE
    elif not resumed:
        verdict = BROKEN
    else:
        verdict = DEFENDED
    return Result(
        "token-from-code",
        verdict,
        figure,
        answered(answers + swept.answers),
        {
            "tokens_obtained": obtained,
            "sweep_tried": swept.tried,
            "sweep_accepted": accepted,
            "sweep_refused": swept.refused,
            "sweep_answers": dict(swept.answers),
            "resumed": resumed,
        },
        bystander.worst_ms,
    )


async def squat(target: Target) -> Result:
    """2. One address holds as many codes as it can; can apps elsewhere still get one?"""
    attack = 2
    scale = target.scale
    bystander = await Bystander.start(target, attack)
    codes = [target.code() for _ in range(scale.squat)]
    share = -(-len(codes) // scale.squat_sockets)
    squatters = [
        await Client.open(target.url, target.address(attack, 1)) for _ in range(scale.squat_sockets)
    ]
    apps: list[Client] = []
    try:
        deadline = asyncio.get_running_loop().time() + scale.seconds
        sweeps = await asyncio.gather(
            *(
                sweep(squatter, codes[i * share : (i + 1) * share], deadline)
                for i, squatter in enumerate(squatters)
            )
        )
        held = sum(len(s.accepted) for s in sweeps)
        tried = sum(s.tried for s in sweeps)
        answers = sum((s.answers for s in sweeps), collections.Counter[str]())

        # Each app picks codes at random where the squatter has been (its target), retrying
        # after `Code already in use` as the apps do.
        async def app(host: int) -> str | None:
            client = await Client.open(target.url, target.address(attack, host))
            apps.append(client)
            for _ in range(3):
                code = target.rng.choice(codes)
                reply = await client.request("registerCode", code, "codeRegistered")
                if reply is not None and reply[0] == "codeRegistered":
                    return code
            return None

        limit = asyncio.Semaphore(20)

        async def limited(host: int) -> str | None:
            async with limit:
                return await app(host)

        got = await asyncio.gather(*(limited(10 + i) for i in range(scale.legit_apps)))
        theirs = [code for code in got if code is not None]
        # The other way round: the squatter names the codes the apps now show.
        taken = 0
        for code in theirs:
            reply = await squatters[0].request("registerCode", code, "codeRegistered")
            taken += reply is not None and reply[0] == "codeRegistered"
        await bystander.check_in()
    finally:
        await asyncio.gather(*(client.close() for client in squatters + apps))
        await bystander.close()
    served = len(theirs)
    figure = (
        f"squatter held {percent(held, tried)} codes; apps elsewhere got a code "
        f"{percent(served, scale.legit_apps)}; the apps' codes taken over by the squatter "
        f"{percent(taken, served)}; {bystander.figure()}"
    )
    defended = served == scale.legit_apps and not taken and bystander.served
    return Result(
        "squat",
        DEFENDED if defended else VULNERABLE,
        figure,
        answered(answers),
        {
            "held": held,
            "tried": tried,
            "apps_served": served,
            "apps": scale.legit_apps,
            "taken_over": taken,
        },
        bystander.worst_ms,
    )


async def binary_attachments(target: Target) -> Result:
    """3. A packet declaring a huge attachment count, then binary frames: buffered forever?"""
    attack = 3
    frame = os.urandom(10_000)
    bystander = await Bystander.start(target, attack)
    memory = Memory(target)
    raw = await RawSocket.open(target.url, target.address(attack, 1))
    sent = 0
    stalled = False
    try:
        async with memory.watching():
            await raw.send('45999999999-["checkIn",{"_placeholder":true,"num":0}]')
            deadline = asyncio.get_running_loop().time() + target.scale.seconds
            while sent < target.scale.attachment_bytes and not raw.closed_by_server:
                if asyncio.get_running_loop().time() > deadline:
                    break
                try:
                    await raw.send(frame)
                except Closed as exc:
                    stalled = "Timeout" in str(exc)
                    break
                sent += len(frame)
                if sent % (50 * len(frame)) == 0:
                    await asyncio.sleep(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_until(lambda: raw.closed_by_server), 3)
        await bystander.check_in()
    finally:
        await raw.close()
        await bystander.close()
    refused = raw.closed_by_server or bool(raw.errors) or stalled
    growth = memory.growth_mb
    bounded = growth is not None and growth < min(RSS_BOUND_MB, max(10.0, sent / 4 / (1 << 20)))
    how = "closed" if raw.closed_by_server else "stopped reading" if stalled else "kept reading"
    figure = (
        f"server {how} after {sent / (1 << 20):,.1f} MB of attachments; {memory.figure()}; "
        f"{bystander.figure()}"
    )
    # Taking them in silence is not a defence: an RSS that does not move on a server that grew
    # before proves nothing, and a refusal must be told (an error, or the hang-up).
    defended = refused and (growth is None or bounded) and bystander.served
    verdict = DEFENDED if defended else VULNERABLE
    return Result(
        "binary-attachments",
        verdict,
        figure,
        answered(raw.errors) if raw.errors else ("connection closed" if refused else "nothing"),
        {"sent_bytes": sent, "closed": raw.closed_by_server, "rss_growth_mb": growth},
        bystander.worst_ms,
    )


async def _until(condition: Callable[[], bool], every: float = 0.05) -> None:
    while not condition():
        await asyncio.sleep(every)


async def trackers_per_session(target: Target) -> Result:
    """4. Many trackers join one session with one code, then all leave at once."""
    attack = 4
    count = target.scale.trackers
    per_address = 100
    bystander = await Bystander.start(target, attack)
    victim = await pair(target, target.address(attack, 1), target.address(attack, 2))
    http_sessions = [
        _session(target.address(attack, 10 + i)) for i in range(-(-count // per_address))
    ]
    answers: collections.Counter[str] = collections.Counter()
    trackers: list[RawSocket] = []
    limit = asyncio.Semaphore(50)
    memory = Memory(target)

    async def join(i: int) -> bool:
        async with limit:
            try:
                raw = await RawSocket.open(target.url, http_sessions[i // per_address])
            except Closed:
                answers["connection refused"] += 1
                return False
            trackers.append(raw)
            await raw.emit("trackCode", victim.code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(raw.reply.wait(), REPLY_TIMEOUT)
            if raw.replies["trackingStarted"]:
                return True
            answers.update({f"error {text!r}": n for text, n in raw.errors.items()})
            if not raw.errors:
                answers["no reply"] += 1
            return False

    try:
        async with memory.watching():
            accepted = sum(await asyncio.gather(*(join(i) for i in range(count))))
            answers["trackingStarted"] += accepted
            async with bystander.sampling(every=0.1):
                started = time.perf_counter()
                # All leave at once: their TCP connections go.
                await asyncio.gather(*(http.close() for http in http_sessions))
                await asyncio.sleep(0.5)
                home = await _get_root(target)
                await asyncio.sleep(2.0)
            leave_ms = (time.perf_counter() - started) * 1000
    finally:
        await asyncio.gather(*(raw.close() for raw in trackers))
        await asyncio.gather(*(http.close() for http in http_sessions))
        await asyncio.gather(victim.close(), bystander.close())
    figure = (
        f"trackers accepted {percent(accepted, count)}; GET / during the leave "
        f"{'unanswered' if home is None else f'{home:,.0f} ms'}; {bystander.figure()}; "
        f"{memory.figure()}"
    )
    served = bystander.served and home is not None and home <= BYSTANDER_LIMIT_MS
    verdict = DEFENDED if accepted <= count // 2 and served else VULNERABLE
    return Result(
        "trackers-per-session",
        verdict,
        figure,
        answered(answers),
        {
            "accepted": accepted,
            "tried": count,
            "root_ms": home,
            "leave_ms": leave_ms,
            "rss_growth_mb": memory.growth_mb,
        },
        bystander.worst_ms,
    )


async def _get_root(target: Target) -> float | None:
    """Milliseconds for GET / ; None when it is not answered within REPLY_TIMEOUT."""
    started = time.perf_counter()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(target.url + "/", timeout=aiohttp.ClientTimeout(REPLY_TIMEOUT)) as response,
        ):
            await response.read()
            if response.status != 200:
                return None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    return (time.perf_counter() - started) * 1000


#: Unread output a server may hold for one client before it is hoarding (the queues of both
#: kernels are measured and not counted), and what aiohttp's reader buffers before it pauses.
HOARD_BYTES: Final = 2 << 20
#: Growth of the server's RSS that no bounded handling of the attacks here comes near.
RSS_BOUND_MB: Final = 32.0
CLIENT_BUFFER_BYTES: Final = 256 << 10


def _proc_address(field: str) -> tuple[str, int]:
    address, port = field.split(":")
    return socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)


def kernel_queues(local: tuple[str, int]) -> tuple[int, int]:
    """Bytes the kernels hold on the loopback connection from `local` (/proc/net/tcp): towards
    it (its receive queue, the server end's send queue), and from it (the reverse)."""
    inbound = outbound = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            tx_queue, rx_queue = (int(part, 16) for part in fields[4].split(":"))
            if _proc_address(fields[1]) == local:
                inbound, outbound = inbound + rx_queue, outbound + tx_queue
            elif _proc_address(fields[2]) == local:
                inbound, outbound = inbound + tx_queue, outbound + rx_queue
    return inbound, outbound


async def events_in_flight(target: Target) -> Result:
    """5. A burst of checkIn from one socket, and of getStatus from another that never reads."""
    attack = 5
    scale = target.scale
    bystander = await Bystander.start(target, attack)
    own = await pair(target, target.address(attack, 1), target.address(attack, 2))
    memory = Memory(target)
    writer = await RawSocket.open(target.url, target.address(attack, 3), read=True)
    deaf = await RawSocket.open(target.url, target.address(attack, 4), read=False)
    check_in_packet = "42" + json.dumps(["checkIn", own.token])
    status_packet = "42" + json.dumps(["getStatus", {"sessionToken": own.token}])

    async def burst(raw: RawSocket, packet: str, count: int, deadline: float) -> int:
        sent = 0
        loop = asyncio.get_running_loop()
        while sent < count and loop.time() < deadline:
            try:  # a server that stops reading holds the burst back, up to the deadline
                await raw.send(packet, timeout=max(deadline - loop.time(), 0.01))
            except Closed:
                break
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)  # the bystander's measurements run in this loop too
        return sent

    try:
        async with memory.watching(), bystander.sampling(every=0.1):
            deadline = asyncio.get_running_loop().time() + scale.seconds
            sent_check_ins, sent_status = await asyncio.gather(
                burst(writer, check_in_packet, scale.burst, deadline),
                burst(deaf, status_packet, scale.unread, deadline),
            )
            await asyncio.sleep(2.0)  # what the server does with them after the burst
        # The replies waiting in the kernels, and the requests the server has not read yet
        # (a server may stop reading a client that does not read: their replies come later).
        local = deaf.ws.get_extra_info("sockname")
        replies_queued, requests_queued = kernel_queues((local[0], local[1])) if local else (0, 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                _until(
                    lambda: (
                        writer.closed_by_server or sum(writer.replies.values()) >= sent_check_ins
                    )
                ),
                10,
            )
        # Whatever the deaf socket was left with, and whether the server hung up on it.
        deaf_closed = await deaf.read_to_end(quiet=2.0)
        writer_closed = writer.closed_by_server
    finally:
        await asyncio.gather(writer.close(), deaf.close(), own.close())
        await bystander.close()
    growth = memory.growth_mb
    # What was left for the deaf socket, less what sat in the kernels and the client's buffer,
    # and the replies to the requests not read yet then: what the server itself held.
    replies = max(deaf.replies["statusUpdate"], 1)
    later = requests_queued // (len(status_packet) + 6) * (deaf.received_bytes // replies)
    held = max(0, deaf.received_bytes - replies_queued - CLIENT_BUFFER_BYTES - later)
    figure = (
        f"{bystander.figure()}; {memory.figure()}; checkIn burst {sent_check_ins:,} sent, "
        f"{writer.replies['checkInConfirmed']:,} confirmed"
        f"{', connection closed' if writer_closed else ''}; getStatus unread {sent_status:,}: "
        + (
            f"closed after {deaf.replies['statusUpdate']:,} replies"
            if deaf_closed
            else f"kept open, {held / (1 << 20):,.1f} MB of replies held by the server"
        )
    )
    hoarded = not deaf_closed and held > HOARD_BYTES
    if not bystander.served or hoarded or (growth is not None and growth >= RSS_BOUND_MB):
        verdict = VULNERABLE
    elif growth is None and not deaf_closed:
        verdict = NOT_APPLICABLE  # no starvation seen; the memory cannot be
    else:
        verdict = DEFENDED
    errors = writer.errors + deaf.errors
    return Result(
        "events-in-flight",
        verdict,
        figure,
        answered(errors)
        if errors
        else ("connection closed" if deaf_closed or writer_closed else "every event answered"),
        {
            "check_ins_sent": sent_check_ins,
            "confirmed": writer.replies["checkInConfirmed"],
            "status_sent": sent_status,
            "deaf_closed": deaf_closed,
            "deaf_left_bytes": deaf.received_bytes,
            "deaf_replies_in_kernels_bytes": replies_queued,
            "deaf_requests_in_kernels_bytes": requests_queued,
            "server_held_bytes": held,
            "writer_closed": writer_closed,
            "rss_growth_mb": growth,
        },
        bystander.worst_ms,
    )


async def log_flood(target: Target) -> Result:
    """6. Refused registrations and malformed packets: a log line each?"""
    attack = 6
    if target.log is None:
        return Result("log-flood", NOT_APPLICABLE, "needs --log FILE (the server's log)", "")
    bystander = await Bystander.start(target, attack)
    holder = await Client.open(target.url, target.address(attack, 1))
    held = await register(target, holder)
    size = _size(target.log)
    raw = await RawSocket.open(target.url, target.address(attack, 2))
    quarter = target.scale.log_flood // 4
    floods: list[str] = (
        ["42" + json.dumps(["registerCode", target.code()]) for _ in range(quarter)]  # quota
        + ["42" + json.dumps(["registerCode", held]) for _ in range(quarter)]  # in use
        + ['42["registerCode",null]' for _ in range(quarter)]  # a bad payload
        + ["42{}" for _ in range(quarter)]  # not a Socket.IO event at all
    )
    sent = 0
    try:
        deadline = asyncio.get_running_loop().time() + target.scale.seconds
        for packet in floods:
            if asyncio.get_running_loop().time() > deadline:
                break
            if raw.closed_by_server:  # an attacker connects again
                await raw.close()
                raw = await RawSocket.open(target.url, target.address(attack, 2))
            try:
                await raw.send(packet)
            except Closed:
                continue
            sent += 1
            if sent % WINDOW == 0:  # paced, so that every one of them is handled
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(raw.reply.wait(), 2)  # set on a reply or a hang-up
                raw.reply.clear()
        await asyncio.sleep(1.5)  # the server's last lines reach the file
        await bystander.check_in()
    except Closed:
        pass
    finally:
        await asyncio.gather(raw.close(), holder.close(), bystander.close())
    lines, written = _lines_since(target.log, size)
    figure = (
        f"{lines:,} log lines ({written / 1024:,.0f} KB) for {sent:,} abusive messages; "
        f"{bystander.figure()}"
    )
    verdict = DEFENDED if lines <= 50 and bystander.served else VULNERABLE
    return Result(
        "log-flood",
        verdict,
        figure,
        answered(raw.errors),
        {"lines": lines, "bytes": written, "sent": sent},
        bystander.worst_ms,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _lines_since(path: Path, offset: int) -> tuple[int, int]:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            data = log.read()
    except OSError:
        return 0, 0
    return data.count(b"\n"), len(data)


async def connections_per_address(target: Target) -> Result:
    """7. Many connections with unfinished HTTP headers from one address."""
    attack = 7
    count = target.scale.connections
    bystander = await Bystander.start(target, attack)
    host, port = target.host_port
    address = target.address(attack, 1)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed_to_open = 0
    partial = f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\n".encode()

    async def open_one() -> None:
        nonlocal failed_to_open
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(address, 0)), REPLY_TIMEOUT
            )
            writer.write(partial)
            streams.append((reader, writer))
        except (OSError, TimeoutError):
            failed_to_open += 1

    async def still_open(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(1), 1.0)
        except TimeoutError:
            return True  # nothing came, nothing closed: held
        except OSError:
            return False
        return False  # an answer or EOF: the server let it go

    other: Pair | None = None
    paired = False
    try:
        for start in range(0, count, 50):
            await asyncio.gather(*(open_one() for _ in range(start, min(start + 50, count))))
        await asyncio.sleep(1.0)
        held = sum(await asyncio.gather(*(still_open(reader) for reader, _ in streams)))
        # While they are held: a phone elsewhere pairs, a bystander checks in.
        try:
            other = await asyncio.wait_for(
                pair(target, target.address(attack, 20), target.address(attack, 21)), 15
            )
            paired = True
        except (RuntimeError, TimeoutError, socketio.exceptions.ConnectionError):
            paired = False
        await bystander.check_in()
    finally:
        for _, writer in streams:
            writer.close()
        if other is not None:
            await other.close()
        await bystander.close()
    figure = (
        f"held open {percent(held, count)} unfinished connections "
        f"({failed_to_open:,} not accepted); another address paired: "
        f"{'yes' if paired else 'no'}; {bystander.figure()}"
    )
    verdict = DEFENDED if held < count * 0.8 and paired and bystander.served else VULNERABLE
    return Result(
        "connections-per-address",
        verdict,
        figure,
        f"{count - held - failed_to_open:,} closed, {failed_to_open:,} refused",
        {"held": held, "tried": count, "refused": failed_to_open, "paired": paired},
        bystander.worst_ms,
    )


async def roles(target: Target) -> Result:
    """8. A tracker, holding the token, acts as the tracked person of the session it tracks."""
    attack = 8
    bystander = await Bystander.start(target, attack)
    victim = await pair(target, target.address(attack, 1), target.address(attack, 2))
    tracker, token = victim.tracker, victim.token
    answers: collections.Counter[str] = collections.Counter()
    accepted: list[str] = []
    try:
        tries: list[tuple[str, Any, str]] = [
            ("checkIn", token, "checkInConfirmed"),
            (
                "setTimers",
                {
                    "sessionToken": token,
                    "reminderTimeMinutes": TIMERS_MAX_MINUTES,
                    "alertTimeMinutes": TIMERS_MAX_MINUTES,
                },
                "timersSet",
            ),
            ("reconnectSession", {"sessionToken": token, "role": "tracked"}, "sessionReconnected"),
        ]
        for event, data, success in tries:
            reply = await tracker.request(event, data, success)
            answers[describe(reply)] += 1
            if reply is not None and reply[0] == success:
                accepted.append(event)
        own = await check_in(victim.tracked, token)  # the tracked person still can
        await bystander.check_in()
    finally:
        await asyncio.gather(victim.close(), bystander.close())
    figure = (
        f"tracker's tries accepted {percent(len(accepted), 3)}"
        f"{' (' + ', '.join(accepted) + ')' if accepted else ''}; "
        f"the tracked person's own check-in: {'confirmed' if own is not None else 'refused'}"
    )
    if accepted or not bystander.served:
        verdict = VULNERABLE
    elif own is None:
        verdict = BROKEN
    else:
        verdict = DEFENDED
    return Result(
        "roles", verdict, figure, answered(answers), {"accepted": accepted}, bystander.worst_ms
    )


ATTACKS: Final[dict[str, Attack]] = {
    "token-from-code": token_from_code,
    "squat": squat,
    "binary-attachments": binary_attachments,
    "trackers-per-session": trackers_per_session,
    "events-in-flight": events_in_flight,
    "log-flood": log_flood,
    "connections-per-address": connections_per_address,
    "roles": roles,
}


async def run_attack(name: str, target: Target) -> Result:
    """One attack; when it cannot run (e.g. the honest pairing it starts with is refused), that
    is reported in its row."""
    try:
        return await ATTACKS[name](target)
    except Exception as exc:  # the table must still be printed
        return Result(name, BROKEN, f"attack could not run: {type(exc).__name__}: {exc}", "")


async def run(names: Iterable[str], target: Target) -> list[Result]:
    return [await run_attack(name, target) for name in names]


# ---------------------------------------------------------------------------------- CLI


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP `port`, from /proc (same user only)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
    return None


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def table(results: Sequence[Result]) -> str:
    rows = [("attack", "verdict", "figure", "answered")] + [
        (r.attack, r.verdict, r.figure, r.answered) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        " | ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])), row[3]])
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in [*widths, 8]))
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:3000 (loopback only)")
    parser.add_argument("--only", nargs="+", choices=list(ATTACKS), metavar="NAME")
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--pid", type=int, help="the server's pid, for its RSS")
    parser.add_argument("--log", type=Path, help="the server's log file (for log-flood)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    url = args.url.rstrip("/")
    if not loopback(url):
        print(f"{url}: attacks run against loopback only", file=sys.stderr)
        return 2
    target = Target(url=url, scale=SCALES[args.scale], log=args.log)
    target.pid = args.pid or listener_pid(target.host_port[1])
    names = args.only or list(ATTACKS)
    started = time.monotonic()
    results = asyncio.run(run(names, target))
    print(table(results))
    print(
        f"\n{args.scale} scale, {time.monotonic() - started:.0f} s, "
        f"server pid {target.pid or 'unknown'}, clients from 127.{target.run}.*.*"
    )
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return 0 if all(r.verdict == DEFENDED for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
