"""Benchmark: what the server costs per check-in, per connection, per connect, and to start.

Starts a private redis-server and the server (`python -m server`, persistence on), loopback
only, and measures, each --runs times (the median is reported):

  cpu       server CPU time per confirmed check-in at saturation (closed loop, every check-in
            persisted; Redis's CPU per check-in separately), check-ins/s and p50 latency
  connections  resident memory per open connection: RSS with 0 and with 5,000 idle
            Socket.IO connections over WebSocket; and the rate at which 200 concurrent
            openers opened them (Socket.IO connects completed per second)
  startup   time from starting the process to serving one of 100,000 stored sessions
            (GET /api/status/<token> -> 200)

Results go to bench/results.json and a table to stdout. The machine may be shared: CPU time
per event and memory per connection are steadier than rates and latencies; all are noisy.

    .venv/bin/python scripts/benchmark.py                # about 3 minutes
    .venv/bin/python scripts/benchmark.py --quick        # smoke run, under a minute
    .venv/bin/python scripts/benchmark.py --only cpu --profile   # + py-spy profile in bench/

Side by side with the Node server (scripts/benchkit/sidebyside.py says what is measured):
ours and Node's, one after the other, on one Redis, under the same load, as ours, Node's and
ours/Node; --client node makes the load with the real socket.io-client (tests/node/loadgen.js).

    .venv/bin/python scripts/benchmark.py --against-node ../shared/node-original --client node
    .venv/bin/python scripts/benchmark.py --against-node DIR --quick     # smoke run, about 1 min
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchkit import sidebyside
from benchkit.processes import (
    ROOT,
    Servers,
    process_cpu,
    process_rss_kb,
    raise_fd_limit,
    stop,
    wait_http,
)
from benchkit.profile import start_py_spy, summarize_profile
from benchkit.sidebyside import PARTS as SIDE
from benchkit.sidebyside import git_commit
from loadtest import Config, RawSocket, cpu_seconds, run_load
from redis import asyncio as aioredis

sys.path.insert(0, str(ROOT))

from server import keys
from server.models import Session
from server.store import _encode

PARTS = ("cpu", "connections", "startup")


# ------------------------------------------------------------------------- measurements


async def measure_cpu(
    servers: Servers, args: argparse.Namespace, profile: Path | None = None
) -> dict[str, Any]:
    """One saturation run: server and Redis CPU per confirmed check-in."""
    proc, url = await servers.start()
    redis_pid = servers.redis_proc.pid
    marks: dict[str, tuple[float, float, float]] = {}
    spy: list[subprocess.Popen[bytes]] = []

    def mark(name: str) -> Callable[[], None]:
        def take() -> None:
            marks[name] = (process_cpu(proc.pid), process_cpu(redis_pid), time.perf_counter())
            if name == "start" and profile is not None:
                spy.append(start_py_spy(proc.pid, profile, args.duration))

        return take

    config = Config(
        url=url,
        pairs=args.pairs,
        rate=0,
        duration=args.duration,
        timers=True,
        procs=args.procs,
        progress=False,
    )
    try:
        report = await run_load(config, on_start=mark("start"), on_end=mark("end"))
        for py_spy in spy:
            py_spy.wait(args.duration + 60)
    finally:
        stop(proc)
    (server0, redis0, t0), (server1, redis1, t1) = marks["start"], marks["end"]
    confirmed = report["confirmed"]
    if not confirmed or report["errors_total"]:
        raise RuntimeError(f"load failed: {report['errors']} ({confirmed} confirmed)")
    return {
        "server_cpu_us_per_check_in": round((server1 - server0) / confirmed * 1e6, 1),
        "redis_cpu_us_per_check_in": round((redis1 - redis0) / confirmed * 1e6, 1),
        "server_cpu_pct_of_one_core": round(100 * (server1 - server0) / (t1 - t0), 1),
        "check_ins_per_s": report["throughput_per_s"],
        "latency_ms_p50": report["latency_ms"]["p50"],
        "latency_ms_p99": report["latency_ms"]["p99"],
        "generator_cpu_pct": report["generator"]["cpu_pct_of_one_core"],
        "confirmed": confirmed,
    }


async def open_sockets(
    url: str, http: aiohttp.ClientSession, count: int, concurrency: int
) -> tuple[list[RawSocket], collections.Counter[str]]:
    """Open `count` Socket.IO connections over WebSocket, `concurrency` at a time."""
    sockets: list[RawSocket] = []
    errors: collections.Counter[str] = collections.Counter()
    left = count

    async def opener() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            sock = RawSocket(http, url, frozenset())
            try:
                await asyncio.wait_for(sock.connect(), 30)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                await sock.close()
                continue
            sockets.append(sock)

    await asyncio.gather(*(opener() for _ in range(min(concurrency, count))))
    return sockets, errors


async def measure_connections(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """RSS with 0 and with N idle connections; the rate at which the N were opened."""
    proc, url = await servers.start()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[RawSocket] = []
    try:
        # Warm up (first-use allocations, imports), then let the warm-up sockets go.
        warm, _ = await open_sockets(url, http, 50, 50)
        await asyncio.gather(*(sock.close() for sock in warm))
        await asyncio.sleep(1.0)
        rss0 = process_rss_kb(proc.pid)
        server0, client0, t0 = process_cpu(proc.pid), cpu_seconds(), time.perf_counter()
        sockets, errors = await open_sockets(url, http, args.connections, args.openers)
        elapsed = time.perf_counter() - t0
        server1, client1 = process_cpu(proc.pid), cpu_seconds()
        if errors:
            raise RuntimeError(f"connections failed: {dict(errors)}")
        await asyncio.sleep(2.0)
        rss1 = process_rss_kb(proc.pid)
    finally:
        # Killed, not stopped: closing thousands of sockets is not what is measured here.
        stop(proc, kill=True)
        await asyncio.gather(*(sock.close() for sock in sockets), return_exceptions=True)
        await http.close()
    opened = len(sockets)
    return {
        "rss_kb_idle": rss0,
        "rss_kb_connected": rss1,
        "kb_per_connection": round((rss1 - rss0) / opened, 2),
        "connects_per_s": round(opened / elapsed, 1),
        "server_cpu_us_per_connect": round((server1 - server0) / opened * 1e6, 1),
        "opener_cpu_pct": round(100 * (client1 - client0) / elapsed, 1),
        "connections": opened,
    }


async def seed_sessions(redis: aioredis.Redis, count: int) -> list[str]:
    """Store `count` session records as the Node server would have; returns their tokens."""
    tokens = []
    now = time.time_ns() // 1_000_000
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        token = secrets.token_hex(32)
        record = Session(
            last_check_in=now - random.randrange(3_600_000),
            reminder_time_minutes=60,
            alert_time_minutes=1440,
            settings_configured=True,
        )
        pipe.set(keys.session(token), _encode(record), ex=keys.SESSION_TTL_SECONDS)
        tokens.append(token)
        if n % 2000 == 1999:
            await pipe.execute()
    await pipe.execute()
    return tokens


async def measure_startup(servers: Servers, tokens: list[str]) -> dict[str, Any]:
    """From Popen to GET /api/status/<a stored token> answering 200."""
    token = random.choice(tokens)
    started = time.perf_counter()
    proc, url = servers.spawn()
    try:
        served = await wait_http(f"{url}/api/status/{token}", proc)
    finally:
        stop(proc)
    return {"startup_s": round(served - started, 3)}


# ------------------------------------------------------------------------------ profile


# ---------------------------------------------------------------------------------- main


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


UNITS = {
    "server_cpu_us_per_check_in": "µs",
    "redis_cpu_us_per_check_in": "µs",
    "server_cpu_pct_of_one_core": "%",
    "check_ins_per_s": "/s",
    "latency_ms_p50": "ms",
    "latency_ms_p99": "ms",
    "generator_cpu_pct": "%",
    "kb_per_connection": "KB",
    "rss_kb_idle": "KB",
    "rss_kb_connected": "KB",
    "connects_per_s": "/s",
    "server_cpu_us_per_connect": "µs",
    "opener_cpu_pct": "%",
    "startup_s": "s",
}


def print_table(results: dict[str, Any]) -> None:
    print(f"{'figure':<30} {'median':>12}  runs")
    for part in results["figures"].values():
        for key, median in part["median"].items():
            if key not in UNITS:
                continue
            runs = ", ".join(f"{run[key]:g}" for run in part["runs"])
            print(f"{key:<30} {median:>10g} {UNITS[key]:<2} {runs}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--only", help=f"some of {','.join(PARTS)} (side by side: of {SIDE})")
    parser.add_argument("--pairs", type=int, help="closed-loop pairs (100; side by side 200)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cpu run")
    parser.add_argument("--procs", type=int, default=1, help="generator processes for cpu")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--openers", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=100_000, help="stored, for startup")
    parser.add_argument("--profile", action="store_true", help="py-spy one more run into bench/")
    parser.add_argument("--output", type=Path, help="results (bench/results.json)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    sidebyside.add_arguments(parser)
    args = parser.parse_args()
    raise_fd_limit()
    if args.against_node is not None:
        args.pairs = args.pairs or 200
        return await sidebyside.run(args)
    args.pairs = args.pairs or 100
    args.output = args.output or ROOT / "bench" / "results.json"
    if args.quick:
        args.runs, args.duration, args.connections, args.sessions = 1, 3.0, 500, 10_000
    parts = [part.strip() for part in (args.only or ",".join(PARTS)).split(",") if part.strip()]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")

    workdir = Path(tempfile.mkdtemp(prefix="benchmark-"))
    servers = Servers(workdir)
    redis = await servers.wait_redis()
    figures: dict[str, Any] = {}
    load_before = os.getloadavg()
    try:
        measures: dict[str, Callable[[], Any]] = {
            "cpu": lambda: measure_cpu(servers, args),
            "connections": lambda: measure_connections(servers, args),
        }
        if "startup" in parts:
            print(f"seeding {args.sessions} sessions...", file=sys.stderr)
            tokens = await seed_sessions(redis, args.sessions)
            measures["startup"] = lambda: measure_startup(servers, tokens)
        for part in parts:
            runs = []
            for n in range(args.runs):
                print(f"{part}: run {n + 1}/{args.runs}", file=sys.stderr)
                runs.append(await measures[part]())
            figures[part] = {"median": median_of(runs), "runs": runs}
        if args.profile:
            print("cpu: profiling one more run with py-spy", file=sys.stderr)
            out = args.output.parent
            await measure_cpu(servers, args, profile=out)
            summary = summarize_profile(out / "profile.txt")
            (out / "profile-summary.txt").write_text(summary + "\n")
            print(summary, file=sys.stderr)
    except Exception:
        print(f"server log tail:\n{servers.log_tail()}", file=sys.stderr)
        raise
    finally:
        await redis.aclose()
        servers.close()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(["scripts/benchmark.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "runs": args.runs,
            "pairs": args.pairs,
            "duration_s": args.duration,
            "generator_procs": args.procs,
            "connections": args.connections,
            "openers": args.openers,
            "sessions": args.sessions,
        },
        "figures": figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
