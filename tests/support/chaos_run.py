"""A chaos run: one private Redis, 2-3 server instances, N clients following their plan while the
fault schedule kills, restarts and stalls things; then a settle, the final probes, and the
checker over what everyone saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
from redis import asyncio as aioredis

from server import keys
from server.instances import ALIVE_MS

from . import chaos_checker
from .chaos_client import Client, World, now_ms
from .chaos_history import FINAL, FaultRecord, HealthSample, History, Memory, Snapshot
from .chaos_plan import ALL_FAULTS, Fault, FaultPlan, Plan, Role, make_plan
from .processes import RedisServer, ServerProcess

HEALTH_EVERY = 0.5


@dataclass
class Options:
    seed: int
    clients: int = 20
    instances: int = 3
    seconds: float = 60.0
    faults: tuple[Fault, ...] = ALL_FAULTS
    settle: float = 8.0  # > 5 s: a dead instance's sockets stop counting (instances.py)
    attempt_limit: int = 10
    memory_slack_mb: int = 30
    workdir: Path | None = None
    say: Callable[[str], None] = print
    env: dict[str, str] = field(default_factory=dict)  # extra server environment


def rss_kb(server: ServerProcess) -> int:
    if server.process is None:
        return 0
    try:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Run:
    def __init__(self, options: Options) -> None:
        # The client library logs a connection it drops as an error: the history says it.
        for name in ("engineio.client", "socketio.client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.o = options
        self.plan: Plan = make_plan(
            options.seed,
            clients=options.clients,
            instances=options.instances,
            seconds=options.seconds,
            faults=options.faults,
        )
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{options.seed}-"))
        self.redis = RedisServer(
            self.workdir / "redis", extra_args=("--enable-debug-command", "local")
        )
        env = {
            "TRUST_PROXY": "true",
            "LOG_LEVEL": "INFO",
            "CODE_ATTEMPTS_PER_MINUTE": str(options.attempt_limit),
            "SHUTDOWN_TIMEOUT": "5",
            **options.env,
        }
        self.servers = [
            ServerProcess(self.workdir / f"server-{i}.log", redis_url=self.redis.url, env=dict(env))
            for i in range(options.instances)
        ]
        self.baseline: dict[int, int] = {}
        self.history = History(
            seed=options.seed,
            started=0,
            ended=0,
            attempt_limit=options.attempt_limit,
            roles={c.name: c.role.value for c in self.plan.clients},
            addresses={c.name: c.address for c in self.plan.clients},
            codes={c.name: c.code for c in self.plan.clients if c.code is not None},
            memory_slack_kb=options.memory_slack_mb * 1024,
        )
        self.world = World([s.url for s in self.servers], self.history.entries.append)
        self.clients = [Client(c, i, self.world) for i, c in enumerate(self.plan.clients)]

    # ------------------------------------------------------------------------------- run

    async def run(self) -> tuple[History, list[chaos_checker.Verdict]]:
        o, h = self.o, self.history
        o.say(
            f"chaos: seed {o.seed}: {len(self.clients)} clients, {o.instances} instances, "
            f"{o.seconds:g} s, faults {','.join(f.value for f in o.faults) or 'none'}"
        )
        o.say("chaos: a seed replays the same actions and faults; their timing differs run to run")
        o.say(f"chaos: workdir {self.workdir}")
        self.redis.start()
        try:
            await asyncio.gather(*(s.start() for s in self.servers))
            await asyncio.sleep(1.0)
            for i, server in enumerate(self.servers):
                self.baseline[i] = rss_kb(server)
            h.started = now_ms()
            self.world.stop_at = time.monotonic() + o.seconds
            health = asyncio.create_task(self._sample_health())
            faults = asyncio.create_task(self._faults())
            actors = [asyncio.create_task(c.run()) for c in self.clients]
            await faults
            _, late = await asyncio.wait(actors, timeout=o.seconds + 20)
            for task in late:
                task.cancel()
            await self._everything_up()
            h.ended = now_ms()
            o.say(f"chaos: actions and faults over; settling {o.settle:g} s")
            await asyncio.sleep(o.settle)
            h.settled = await self._snapshot()
            await self._probe_own_codes()
            for client in self.clients:
                await client.hang_up()
            await asyncio.sleep(o.settle)
            h.emptied = await self._snapshot()
            h.memory = [Memory(i, self.baseline[i], rss_kb(s)) for i, s in enumerate(self.servers)]
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
        finally:
            for client in self.clients:
                with contextlib.suppress(Exception):
                    await client.hang_up()
            self._stop_all()
        for i, server in enumerate(self.servers):
            h.logs[f"server-{i}.log"] = server.log_text()
        (self.workdir / "history.json").write_text(h.dump())
        verdicts = chaos_checker.check(h)
        return h, verdicts

    def _stop_all(self) -> None:
        for i, server in enumerate(self.servers):
            if server.running:
                self._stopped(i, server)
            server.kill()
        self.redis.kill()

    def _stopped(self, i: int, server: ServerProcess) -> None:
        try:
            code = server.stop()
        except AssertionError:
            code = -1
        self.history.exit_codes.setdefault(f"server-{i}.log", []).append(code)

    async def _everything_up(self) -> None:
        if not self.redis.running:
            self.redis.start()
        for i, server in enumerate(self.servers):
            if not server.running:
                await self._start(i)

    async def _start(self, i: int) -> None:
        await self.servers[i].start()
        await asyncio.sleep(0.5)
        self.baseline[i] = rss_kb(self.servers[i])

    # ---------------------------------------------------------------------------- faults

    async def _faults(self) -> None:
        start = time.monotonic()
        for fault in self.plan.faults:
            await asyncio.sleep(max(start + fault.at - time.monotonic(), 0))
            began = now_ms()
            detail = await self._fault(fault)
            record = FaultRecord(fault.fault.value, began, now_ms(), fault.instance, detail)
            if fault.fault in (Fault.STALL, Fault.REDIS_RESTART):
                record.instance = None
            self.history.faults.append(record)
            self.o.say(
                f"chaos: +{(began - self.history.started) / 1000:.1f}s {fault.fault.value} "
                f"{detail} ({(record.end - began) / 1000:.1f} s)"
            )
        await asyncio.sleep(max(start + self.o.seconds - time.monotonic(), 0))

    async def _fault(self, fault: FaultPlan) -> str:
        i = fault.instance
        if fault.fault is Fault.SIGTERM:
            await asyncio.to_thread(self._stopped, i, self.servers[i])
            await self._start(i)
            return f"instance {i}"
        if fault.fault is Fault.KILL:
            self.servers[i].kill()
            await asyncio.sleep(fault.seconds)
            await self._start(i)
            return f"instance {i}, down {fault.seconds:g} s"
        if fault.fault is Fault.STALL:
            seconds = f"{fault.seconds:g}"
            reply = await asyncio.to_thread(
                self.redis.command, "DEBUG", "SLEEP", seconds, timeout=fault.seconds + 5
            )
            return f"DEBUG SLEEP {seconds}: {reply}"
        self.redis.kill()
        await asyncio.sleep(fault.seconds)
        await asyncio.to_thread(self.redis.start)
        return f"down {fault.seconds:g} s, back empty"

    # --------------------------------------------------------------------------- observing

    async def _sample_health(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.gather(
                    *(self._health(http, i, s) for i, s in enumerate(self.servers) if s.running)
                )
                await asyncio.sleep(HEALTH_EVERY)

    async def _health(self, http: aiohttp.ClientSession, i: int, server: ServerProcess) -> None:
        sent = now_ms()
        status: int | str
        redis: str | None = None
        try:
            async with http.get(
                server.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1.5)
            ) as response:
                status = response.status
                with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                    redis = (await response.json()).get("redis")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = type(exc).__name__
        self.history.health.append(HealthSample(sent, i, status, redis))

    async def _snapshot(self) -> Snapshot:
        taken = now_ms()
        connected = [c.sid for c in self.clients if c.sid is not None]
        client = aioredis.from_url(self.redis.url, decode_responses=True)
        try:
            records = await _read_all(client, "session:*")
            codes = await _read_all(client, "code:*")
            beats = await client.zrange(keys.INSTANCES, 0, -1, withscores=True)
        finally:
            await client.aclose()
        return Snapshot(
            taken,
            connected,
            {k.removeprefix("session:"): v for k, v in records.items()},
            {k.removeprefix("code:"): v for k, v in codes.items()},
            [name for name, at in cast(list[tuple[str, float]], beats) if at > taken - ALIVE_MS],
        )

    async def _probe_own_codes(self) -> None:
        """Each tracked app, connected or not, registers its own code once more; one that has
        to connect first rejoins its session with its token before, as the app does."""
        for client in self.clients:
            if client.plan.role is not Role.TRACKED or client.plan.code is None:
                continue
            client.phase = FINAL
            if not client.connected:
                await client.connect(0, "websocket")
                if client.token is not None:
                    rejoin = {"sessionToken": client.token, "role": "tracked"}
                    await client.request("reconnectSession", rejoin, client.token)
            await client.request("registerCode", client.plan.code, client.token)


async def _read_all(client: aioredis.Redis, pattern: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    async for key in client.scan_iter(match=pattern, count=500):
        raw = await client.get(key)
        if raw is None:
            continue
        with contextlib.suppress(ValueError):
            found[key] = json.loads(raw)
    return found


async def chaos(options: Options) -> tuple[History, list[chaos_checker.Verdict]]:
    """Run, check, and print each invariant; returns the history and the verdicts."""
    history, verdicts = await Run(options).run()
    for verdict in verdicts:
        options.say(verdict.render())
    failed = sum(not v.ok for v in verdicts)
    options.say(
        f"chaos: seed {options.seed}: {len(verdicts) - failed} of {len(verdicts)} invariants hold"
    )
    return history, verdicts


def run_sync(options: Options) -> list[chaos_checker.Verdict]:
    return asyncio.run(chaos(options))[1]
