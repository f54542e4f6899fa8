"""Ours against the Node server, side by side: `scripts/benchmark.py --against-node DIR`.

Both servers run one after the other in one invocation, on the same private redis-server
(emptied before each start), each freshly started and warmed up, under the same load from the
same generator: our Python clients (`--client python`) or the real Node socket.io-client 4.8,
the apps' client (`--client node`, tests/node/loadgen.js). Each run measures both servers,
alternating which goes first; every figure is the median over --runs, printed as ours, Node's
and ours/Node.

  websocket  N/2 pairs paired over WebSocket (connect, registerCode, trackCode, setTimers),
             --concurrency pairs at a time: the time to pair them; then held idle: resident
             memory per open connection ((lowest RSS in the idle window - lowest RSS in the
             settle before pairing) / N) and the server's CPU over the idle window (>= 2 pings:
             pings only); then closed, and --pairs pairs check in as fast as confirmed for
             --duration s: server (and Redis) CPU per confirmed check-in; then closed, and
             N/2 pairs paired again on the same process: the pairing of a server that has run
             for a while (by then V8 has compiled the Node server's hot paths: 2,500 pairs took
             it 1.55-1.72 s fresh and 1.01-1.24 s on the same process again)
  connects   --connects connections opened over WebSocket, and as today's apps do: polling
             first, then upgraded to WebSocket: server CPU per connection and memory per
             connection over a connection's first seconds (until --first-seconds after the last
             one opened)
  polling    --polling-connections connections that stay on polling, held idle: memory per
             connection and CPU over the idle window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from .generators import Generator, Outcome, start_generator
from .processes import (
    RAISED_QUOTAS,
    ROOT,
    Servers,
    machine_cpu,
    process_cpu,
    process_rss_kb,
    stop,
)
from .profile import Recorder

PARTS = ("websocket", "connects", "polling")
KINDS = ("ours", "node")

# (key, label, unit): the figures compared, in the order printed. {n} etc. come from the run.
FIGURES = (
    ("kb_per_connection", "resident memory per open WebSocket connection ({connections})", "KB"),
    ("idle_cpu_pct", "CPU of idle WebSocket connections ({connections}, pings only)", "%"),
    ("cpu_us_per_check_in", "server CPU per confirmed check-in ({pairs} pairs)", "µs"),
    ("pairing_s", "time to pair {idle_pairs} pairs (connect, register, track, timers)", "s"),
    ("pairing_connect_ms", "  pairing, mean wait: tracked connects", "ms"),
    ("pairing_registerCode_ms", "  pairing, mean wait: registerCode -> codeRegistered", "ms"),
    ("pairing_tracker_connect_ms", "  pairing, mean wait: tracker connects", "ms"),
    ("pairing_trackCode_ms", "  pairing, mean wait: trackCode -> trackingStarted", "ms"),
    ("pairing_setTimers_ms", "  pairing, mean wait: setTimers -> timersSet", "ms"),
    ("pairing_machine_idle_pct", "  pairing: the machine's CPU left idle (all cores)", "%"),
    ("cpu_us_per_pair", "  pairing: server CPU per pair", "µs"),
    ("pairing_again_s", "time to pair {idle_pairs} more pairs, same process (warm)", "s"),
    ("cpu_us_per_pair_again", "  pairing again: server CPU per pair", "µs"),
    (
        "cpu_us_per_reconnect",
        "server CPU per tracker reconnect ({reconnects}, {connections} held)",
        "µs",
    ),
    ("reconnect_s", "time for the {reconnects} reconnects", "s"),
    ("reconnect_tracker_connect_ms", "  reconnect, mean wait: tracker connects", "ms"),
    ("reconnect_reconnectSession_ms", "  reconnect, mean wait: reconnectSession", "ms"),
    ("upgrade_cpu_us_per_connect", "polling→WebSocket: server CPU per connection, {first}", "µs"),
    ("upgrade_kb_per_connection", "polling→WebSocket: memory per connection, {first}", "KB"),
    ("websocket_cpu_us_per_connect", "WebSocket: server CPU per connection, {first}", "µs"),
    ("websocket_kb_per_connection", "WebSocket: memory per connection, {first}", "KB"),
    ("polling_kb_per_connection", "stays on polling: memory per connection ({polling})", "KB"),
    ("polling_idle_cpu_pct", "stays on polling: CPU of {polling} idle connections", "%"),
    ("redis_cpu_us_per_check_in", "Redis CPU per confirmed check-in", "µs"),
    ("check_ins_per_s", "confirmed check-ins/s (closed loop)", "/s"),
)
# The generator's own CPU during each phase, % of one core: a saturated generator shows here.
GENERATOR = (
    ("generator_pairing_pct", "pairing"),
    ("generator_idle_pct", "holding the idle WebSocket connections"),
    ("generator_check_in_pct", "closed loop of check-ins"),
    ("generator_reconnect_pct", "tracker reconnects"),
    ("generator_connects_pct", "opening connections (polling→WebSocket)"),
    ("generator_polling_pct", "holding the idle polling connections"),
)


@dataclass
class Mark:
    """The server's, Redis's and the generator's CPU seconds at one moment, and the machine's."""

    server: float
    redis: float
    generator: float
    wall: float = field(default_factory=time.perf_counter)
    machine: tuple[float, float] = field(default_factory=machine_cpu)  # idle, total

    def pct(self, later: Mark, of: str) -> float:
        return round(100 * (getattr(later, of) - getattr(self, of)) / (later.wall - self.wall), 2)

    def idle_pct(self, later: Mark) -> float:
        """The share of the machine's CPU (every core) nobody used in between: a phase that
        leaves some idle while it is slow waits on round trips, not on CPU."""
        idle, total = later.machine[0] - self.machine[0], later.machine[1] - self.machine[1]
        return round(100 * idle / total, 1) if total > 0 else 0.0


def mark(servers: Servers, generator: Generator, proc: subprocess.Popen[bytes]) -> Mark:
    """The server's, its Redis's and the generator's CPU now."""
    return Mark(process_cpu(proc.pid), process_cpu(servers.redis_proc.pid), generator.cpu())


def checked(outcome: Outcome, wanted: int, what: str) -> Outcome:
    if outcome.count < wanted or outcome.errors:
        raise RuntimeError(f"{what}: {outcome.count}/{wanted}, errors {outcome.errors}")
    return outcome


# At most this many pairs paired against each server before the first measured run (warm_up).
WARM_UP_PAIRS = 1000


async def warm_up(
    servers: Servers,
    redis: aioredis.Redis,
    generator: Generator,
    targets: list[tuple[str, Path | None]],
    pairs: int,
    concurrency: int,
) -> None:
    """Warm the generator before anything is measured: `pairs` pairs (at most WARM_UP_PAIRS)
    against each server (kind, tree), on a fresh process, then closed; nothing is kept.

    The Node generator is a V8 process: its hot paths get compiled over its first thousands
    of events, and the server measured first paid for that. In one run (2,500 pairs, 50 at
    a time), the generator's CPU per pair was 1.50 ms against the first server and 0.87 ms
    against the next; the side-by-side run of 4897d06 paired in 3.90 s in its first run
    and in 3.39 and 3.21 s in the next two.
    """
    pairs = min(pairs, WARM_UP_PAIRS)
    for kind, root in targets:
        await redis.flushall()
        proc, url = await servers.start(kind, root)
        try:
            checked(await generator.pair(url, pairs, concurrency), pairs, "warm-up")
        finally:
            await generator.close()
            stop(proc, kill=True)


class Bench:
    """One generator against either server, on one redis-server."""

    def __init__(
        self,
        servers: Servers,
        redis: aioredis.Redis,
        generator: Generator,
        args: argparse.Namespace,
    ) -> None:
        self.servers = servers
        self.redis = redis
        self.generator = generator
        self.args = args
        self.recorder: Recorder | None = None  # set for the profiled run (ours only)
        self.profiles: dict[str, str] = {}

    def mark(self, proc: subprocess.Popen[bytes]) -> Mark:
        return mark(self.servers, self.generator, proc)

    @contextlib.contextmanager
    def phase(self, name: str, kind: str, proc: subprocess.Popen[bytes]) -> Iterator[None]:
        """py-spy on our server for the phase, in a profiled run."""
        if self.recorder is None or kind != "ours":
            yield
            return
        self.recorder.begin(name, proc.pid)
        try:
            yield
        finally:
            self.profiles[name] = self.recorder.end()

    async def server(self, kind: str, mode: str) -> tuple[subprocess.Popen[bytes], str, int]:
        """A fresh server on an empty Redis, warmed up by 50 connections opened and closed.

        Then it is left alone for --baseline-settle s: V8 gives the warm-up's garbage back some
        8-9 s after activity stops (RSS 96-101 -> 60 MB), so an earlier baseline would understate
        the Node server's memory per connection, even below zero. Returns the process, its URL
        and that baseline RSS (KB, the lowest seen while it settled).
        """
        await self.redis.flushall()
        proc, url = await self.servers.start(kind)
        try:
            checked(await self.generator.open(url, 50, 50, mode), 50, "warm-up")
            await self.generator.close()
            baseline = await self.hold(proc, self.args.baseline_settle)
        except BaseException:
            stop(proc, kill=True)
            raise
        return proc, url, baseline

    async def hold(self, proc: subprocess.Popen[bytes], seconds: float) -> int:
        """Wait, sampling the server's RSS twice a second; returns the lowest (KB): the most
        settled, as V8 hands garbage back when it sees fit, not when we look."""
        lowest = process_rss_kb(proc.pid)
        deadline = time.perf_counter() + seconds
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(0.5, left))
            lowest = min(lowest, process_rss_kb(proc.pid))
        return lowest

    async def websocket(self, kind: str) -> dict[str, Any]:
        args, generator = self.args, self.generator
        proc, url, rss0 = await self.server(kind, "websocket")
        try:
            before = self.mark(proc)
            with self.phase("pairing", kind, proc):
                paired = await generator.pair(url, args.idle_pairs, args.concurrency)
            checked(paired, args.idle_pairs, "pairing")
            paired_at = self.mark(proc)
            await asyncio.sleep(args.settle)
            idle0 = self.mark(proc)
            with self.phase("idle", kind, proc):
                rss1 = await self.hold(proc, args.idle_window)
            idle1 = self.mark(proc)
            # Phones dropping and coming back while the others stay (the Node client only).
            churn = getattr(generator, "churn", None)
            if churn is not None and args.reconnects:
                churn0 = self.mark(proc)
                with self.phase("reconnects", kind, proc):
                    churned = checked(
                        await churn(url, args.reconnects, args.concurrency),
                        args.reconnects,
                        "reconnects",
                    )
                churn1 = self.mark(proc)
                reconnects = {
                    "cpu_us_per_reconnect": round(
                        (churn1.server - churn0.server) / churned.count * 1e6, 1
                    ),
                    "reconnect_s": round(churned.seconds, 3),
                    **{f"reconnect_{step}_ms": round(ms, 2) for step, ms in churned.steps.items()},
                    "generator_reconnect_pct": churn0.pct(churn1, "generator"),
                }
            else:
                reconnects = {}
            await generator.close()
            await asyncio.sleep(1.0)
            checked(await generator.pair(url, args.pairs, args.concurrency), args.pairs, "pairs")
            loop0 = self.mark(proc)
            with self.phase("check-in", kind, proc):
                looped = await generator.loop(args.duration)
            loop1 = self.mark(proc)
            if not looped.count or looped.errors:
                raise RuntimeError(f"closed loop: {looped.count} confirmed, {looped.errors}")
            # The same pairing once more on the same process, now warm: a server that has run
            # for a while (V8 has compiled the Node server's hot paths by now).
            await generator.close()
            await asyncio.sleep(1.0)
            again0 = self.mark(proc)
            with self.phase("pairing-again", kind, proc):
                again = await generator.pair(url, args.idle_pairs, args.concurrency)
            checked(again, args.idle_pairs, "pairing again")
            again1 = self.mark(proc)
        finally:
            await generator.close()
            stop(proc, kill=True)
        return {
            "kb_per_connection": round((rss1 - rss0) / (2 * args.idle_pairs), 2),
            "idle_cpu_pct": idle0.pct(idle1, "server"),
            "cpu_us_per_check_in": round((loop1.server - loop0.server) / looped.count * 1e6, 1),
            "pairing_s": round(paired.seconds, 3),
            "cpu_us_per_pair": round((paired_at.server - before.server) / paired.count * 1e6, 1),
            "pairing_again_s": round(again.seconds, 3),
            "cpu_us_per_pair_again": round((again1.server - again0.server) / again.count * 1e6, 1),
            "redis_cpu_us_per_check_in": round((loop1.redis - loop0.redis) / looped.count * 1e6, 1),
            "check_ins_per_s": round(looped.count / looped.seconds, 1),
            "generator_pairing_pct": before.pct(paired_at, "generator"),
            "generator_idle_pct": idle0.pct(idle1, "generator"),
            "generator_check_in_pct": loop0.pct(loop1, "generator"),
            "server_pairing_cpu_pct": before.pct(paired_at, "server"),
            "pairing_machine_idle_pct": before.idle_pct(paired_at),
            **{f"pairing_{step}_ms": round(ms, 2) for step, ms in paired.steps.items()},
            **reconnects,
            "rss_kb_before": rss0,
            "rss_kb_idle": rss1,
            "confirmed": looped.count,
        }

    async def connects(self, kind: str, mode: str) -> dict[str, Any]:
        args = self.args
        proc, url, rss0 = await self.server(kind, mode)
        try:
            before = self.mark(proc)
            with self.phase(f"connect-{mode}", kind, proc):
                opened = await self.generator.open(url, args.connects, args.concurrency, mode)
                checked(opened, args.connects, f"{mode} connects")
                await asyncio.sleep(args.first_seconds)
            after = self.mark(proc)
            rss1 = process_rss_kb(proc.pid)
        finally:
            await self.generator.close()
            stop(proc, kill=True)
        cpu = after.server - before.server
        figures = {
            f"{mode}_cpu_us_per_connect": round(cpu / opened.count * 1e6),
            f"{mode}_kb_per_connection": round((rss1 - rss0) / opened.count, 2),
        }
        if mode == "upgrade":
            figures["generator_connects_pct"] = before.pct(after, "generator")
        return figures

    async def polling(self, kind: str) -> dict[str, Any]:
        args = self.args
        proc, url, rss0 = await self.server(kind, "polling")
        try:
            count = args.polling_connections
            opened = await self.generator.open(url, count, args.concurrency, "polling")
            checked(opened, count, "polling connects")
            await asyncio.sleep(args.settle)
            idle0 = self.mark(proc)
            with self.phase("polling-idle", kind, proc):
                rss1 = await self.hold(proc, args.idle_window)
            idle1 = self.mark(proc)
        finally:
            await self.generator.close()
            stop(proc, kill=True)
        return {
            "polling_kb_per_connection": round((rss1 - rss0) / count, 2),
            "polling_idle_cpu_pct": idle0.pct(idle1, "server"),
            "generator_polling_pct": idle0.pct(idle1, "generator"),
        }

    async def round(self, kind: str, parts: list[str]) -> dict[str, Any]:
        """Every part against one server; each part on a freshly started process."""
        # Others' load on a shared machine shows here (it is in the JSON, not the table).
        figures: dict[str, Any] = {"loadavg_1m": os.getloadavg()[0]}
        for part in parts:
            print(f"  {kind}: {part}", file=sys.stderr, flush=True)
            if part == "websocket":
                figures.update(await self.websocket(kind))
            elif part == "connects":
                figures.update(await self.connects(kind, "websocket"))
                figures.update(await self.connects(kind, "upgrade"))
            else:
                figures.update(await self.polling(kind))
        return figures


# ------------------------------------------------------------------------------ report


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def label_of(template: str, settings: dict[str, Any]) -> str:
    return template.format(
        connections=f"{2 * settings['idle_pairs']:,}",
        idle_pairs=f"{settings['idle_pairs']:,}",
        pairs=settings["pairs"],
        connects=settings["connects"],
        first=f"{settings['connects']} opened + {settings['first_seconds']:g} s",
        polling=f"{settings['polling_connections']:,}",
        reconnects=f"{settings.get('reconnects', 0):,}",
    )


def table(result: dict[str, Any]) -> str:
    """One generator's figures: ours, Node's, ours/Node (medians), then every run."""
    settings, ours, node = result["settings"], result["ours"], result["node"]
    lines = [
        f"load: {result['generator']}; medians of {settings['runs']} runs",
        f"{'figure':<66} {'ours':>9} {'Node':>9} {'ours/Node':>9}   runs ours | Node",
    ]
    for key, template, unit in FIGURES:
        if key not in ours["median"]:
            continue
        mine, theirs = ours["median"][key], node["median"][key]
        ratio = f"{mine / theirs:.2f}" if theirs else "-"
        runs = " ".join(f"{run[key]:g}" for run in ours["runs"])
        runs += " | " + " ".join(f"{run[key]:g}" for run in node["runs"])
        name = f"{label_of(template, settings)} [{unit}]"
        lines.append(f"{name:<66} {mine:>9g} {theirs:>9g} {ratio:>9}   {runs}")
    loads = [
        f"{run['loadavg_1m']:.1f}" for kind in ("ours", "node") for run in result[kind]["runs"]
    ]
    lines.append(f"load average (1 min) as each round started, ours then Node: {' '.join(loads)}")
    lines.append("generator's own CPU, % of one core (against ours | Node):")
    for key, what in GENERATOR:
        if key in ours["median"]:
            lines.append(f"  {what:<64} {ours['median'][key]:>9g} {node['median'][key]:>9g}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("side by side with the Node server (--against-node DIR)")
    group.add_argument("--against-node", type=Path, metavar="DIR", help="the Node server's dir")
    group.add_argument("--client", default="python", help="python, node, or python,node")
    group.add_argument("--idle-window", type=float, default=55.0, help="s; pings every 25 s")
    group.add_argument("--concurrency", type=int, default=50, help="pairings/connects at once")
    group.add_argument("--connects", type=int, default=500)
    group.add_argument(
        "--reconnects", type=int, default=2000, help="trackers that drop and reconnect (node)"
    )
    group.add_argument("--first-seconds", type=float, default=5.0)
    group.add_argument("--polling-connections", type=int, default=1000)
    group.add_argument("--settle", type=float, default=3.0, help="s after opening, before idle")
    group.add_argument("--baseline-settle", type=float, default=12.0, help="s before RSS0")


async def run(args: argparse.Namespace) -> int:
    node_dir: Path = args.against_node.resolve()
    if not (node_dir / "server.js").is_file():
        raise SystemExit(f"--against-node: no server.js in {node_dir}")
    if args.quick:
        args.runs, args.duration, args.connections, args.pairs = 1, 3.0, 500, 50
        args.idle_window, args.connects, args.polling_connections = 6.0, 100, 100
        args.first_seconds, args.settle, args.baseline_settle = 2.0, 1.0, 1.0
    args.idle_pairs = args.connections // 2
    parts = [part.strip() for part in (args.only or ",".join(PARTS)).split(",") if part.strip()]
    clients = [client.strip() for client in args.client.split(",") if client.strip()]
    if set(parts) - set(PARTS) or set(clients) - {"python", "node"}:
        raise SystemExit(f"--only takes {','.join(PARTS)}; --client python and/or node")
    print(f"our server runs with raised per-address quotas: {RAISED_QUOTAS}", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="benchmark-"))
    servers = Servers(workdir, node_dir)
    redis = await servers.wait_redis()
    load_before = os.getloadavg()
    results = []
    try:
        for client in clients:
            results.append(await measure(servers, redis, client, parts, args))
    except Exception:
        print(f"server log tail:\n{servers.log_tail()}", file=sys.stderr)
        raise
    finally:
        await redis.aclose()
        servers.close()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(["scripts/benchmark.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "raised_quotas": RAISED_QUOTAS,
        "results": results,
    }
    output = args.output or ROOT / "bench" / "against-node.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['date']} commit {report['commit']}, {os.cpu_count()} CPUs, load average")
        print(f"{report['machine']['loadavg_before']} before, after: ", end="")
        print(f"{report['machine']['loadavg_after']}; ours with raised quotas: {RAISED_QUOTAS}")
        for result in results:
            print()
            print(table(result))
        print(f"\nwritten to {output}")
    return 0


async def measure(
    servers: Servers,
    redis: aioredis.Redis,
    client: str,
    parts: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    generator = await start_generator(client)
    bench = Bench(servers, redis, generator, args)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    described = getattr(generator, "version", "")
    described = f"Node socket.io-client {described}" if described else "our Python generator"
    try:
        print(f"{client} client: warming the generator up", file=sys.stderr, flush=True)
        targets: list[tuple[str, Path | None]] = [(kind, None) for kind in KINDS]
        await warm_up(servers, redis, generator, targets, args.idle_pairs, args.concurrency)
        for n in range(args.runs):
            # Alternate which server goes first, so that neither always has the cooler machine.
            for kind in KINDS if n % 2 == 0 else KINDS[::-1]:
                print(f"{client} client, run {n + 1}/{args.runs}:", file=sys.stderr, flush=True)
                runs[kind].append(await bench.round(kind, parts))
        if args.profile:
            print(f"{client} client: one more run of ours under py-spy", file=sys.stderr)
            bench.recorder = Recorder((args.output or ROOT / "bench" / "x").parent / client)
            await bench.round("ours", parts)
            for name, summary in bench.profiles.items():
                print(f"\n=== profile of ours: {name}\n{summary}", file=sys.stderr)
    finally:
        await generator.stop()
    return {
        "generator": described,
        "client": client,
        "settings": {
            key: getattr(args, key)
            for key in (
                "runs",
                "pairs",
                "idle_pairs",
                "duration",
                "idle_window",
                "concurrency",
                "connects",
                "first_seconds",
                "polling_connections",
                "reconnects",
            )
        },
        **{kind: {"median": medians(runs[kind]), "runs": runs[kind]} for kind in KINDS},
    }


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server"], cwd=ROOT, capture_output=True
        ).stdout
    except OSError:
        return None
    return f"{head}{'+changes' if dirty else ''}" or None
