"""CPU per script call: redis-py's pooled client against the pipelined lane (server/redislane.py).

Starts a private redis-server, then runs the same small script (the size of a session record
in, one value out) --calls times from --concurrency tasks at once, through the client the
server builds (`persistence.connect`, the pool and its retry) and through a Lane over it, in
turns, --runs times. Prints this process's CPU time per call (user + system) and calls per
second for each, and their medians: the figure for the change, as both run in one process
against one Redis.

    .venv/bin/python scripts/redis_lane_bench.py
    .venv/bin/python scripts/redis_lane_bench.py --concurrency 1 --calls 5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit.processes import ROOT, Servers

sys.path.insert(0, str(ROOT))

from server.persistence import connect
from server.redislane import Lane

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]) return {1, redis.call('GET', KEYS[1])}"
RECORD = "x" * 300


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(script: Any, calls: int, concurrency: int) -> tuple[float, float]:
    """(µs of CPU per call, calls per second)."""

    async def worker(n: int) -> None:
        for _ in range(calls // concurrency):
            await script(keys=[f"bench:{n}"], args=[RECORD])

    started, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    done = calls // concurrency * concurrency
    return (cpu() - cpu0) / done * 1e6, done / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    servers = Servers(Path(tempfile.mkdtemp(prefix="lane-bench-")))
    try:
        await (await servers.wait_redis()).aclose()
        redis = connect(servers.redis_url, timeout=2, max_connections=32)
        lane = Lane(redis, 2.0)
        scripts = {"redis-py": redis.register_script(SCRIPT), "lane": lane.register_script(SCRIPT)}
        for script in scripts.values():
            await script(keys=["bench:warm"], args=[RECORD])  # loaded, connected
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in scripts}
        for run in range(args.runs):
            for name, script in scripts.items():
                us, rate = await measure(script, args.calls, args.concurrency)
                figures[name].append((us, rate))
                print(f"run {run + 1} {name:9} {us:7.1f} µs CPU per call  {rate:9.0f} calls/s")
        for name, runs in figures.items():
            us = statistics.median(figure[0] for figure in runs)
            rate = statistics.median(figure[1] for figure in runs)
            print(f"median    {name:9} {us:7.1f} µs CPU per call  {rate:9.0f} calls/s")
        await lane.close()
        await redis.aclose()
    finally:
        servers.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50, help="tasks calling at once")
    parser.add_argument("--runs", type=int, default=3)
    try:
        import uvloop  # the server's loop when installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parser.parse_args()))
