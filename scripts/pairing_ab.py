"""A/B of server trees (and the Node server), in turn, in one run: pairing, and check-ins.

The side-by-side benchmark (scripts/benchmark.py --against-node) takes 20 minutes and measures
one tree. To decide whether a change to the server is worth keeping, its tree and the tree
without it are run here in alternating rounds (A, B, Node, A, B, Node, ...), each server fresh on
an emptied Redis, under the real socket.io-client (tests/node/loadgen.js, warmed up first
against each: benchkit.sidebyside.warm_up), and compared by the medians of the rounds: on a
shared, noisy machine only figures taken in one run, side by side, carry over.

With --warm N, each server first pairs N pairs on the same process, which are closed again,
before anything is measured: V8 compiles the Node server's hot paths over its first thousands of
events (CPython has no JIT), so a fresh Node process pairs slower than one that has run a while,
as a deployed one has (docs/performance.md, the tenth round).

Per round and server: the time to pair --pairs pairs (--concurrency at a time), the mean wait of
each pairing step (the Node generator's timing), the CPU per pair of the server, of Redis and of
the generator, the share of the machine's CPU left idle, the Redis commands per pair (INFO
commandstats, those inside scripts included); with --reconnects N, then the server's CPU per
tracker reconnect (N trackers drop and reconnectSession on new sockets, the pairs held); with
--check-in S, then the server's CPU per confirmed check-in over S seconds of a closed loop on
those pairs.

    .venv/bin/python scripts/pairing_ab.py --tree ../before --tree . --against-node DIR
    .venv/bin/python scripts/pairing_ab.py --tree . --against-node DIR --rounds 3 --check-in 10
    .venv/bin/python scripts/pairing_ab.py --tree ../before --tree . --against-node DIR --warm 5000

A tree is a checkout whose `server/` is run (`python -m server` from it, by this interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit.generators import NodeGenerator
from benchkit.processes import RAISED_QUOTAS, Servers, process_cpu, raise_fd_limit, stop
from benchkit.sidebyside import checked, mark, warm_up
from redis import asyncio as aioredis

OWN_COMMANDS = ("cmdstat_flushall", "cmdstat_config|resetstat", "cmdstat_info")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout (repeatable)")
    parser.add_argument("--against-node", type=Path, help="the Node server's directory")
    parser.add_argument("--pairs", type=int, default=2500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--warm", type=int, default=0, help="pairs paired (and closed) on each process first"
    )
    parser.add_argument("--check-in", type=float, default=0.0, help="seconds of check-ins")
    parser.add_argument(
        "--reconnects", type=int, default=0, help="trackers that then drop and reconnect"
    )
    args = parser.parse_args()
    args.tree = [tree.resolve() for tree in args.tree or [Path(".")]]
    if len(set(args.tree)) < len(args.tree):
        parser.error("a tree is given twice")
    for tree in args.tree:
        if not (tree / "server" / "__main__.py").is_file():
            parser.error(f"{tree} holds no server/")
    return args


class Rounds:
    def __init__(
        self,
        servers: Servers,
        redis: aioredis.Redis,
        generator: NodeGenerator,
        args: argparse.Namespace,
    ) -> None:
        self.servers = servers
        self.redis = redis
        self.generator = generator
        self.args = args

    async def one(self, kind: str, root: Path | None) -> dict[str, float]:
        args, generator, redis = self.args, self.generator, self.redis
        await redis.flushall()
        proc, url = await self.servers.start(kind, root)
        try:
            checked(await generator.open(url, 50, 50, "websocket"), 50, "warm-up")
            await generator.close()
            await asyncio.sleep(1.0)
            if args.warm:
                await self.warm(proc, url)
            await redis.config_resetstat()
            before = mark(self.servers, generator, proc)
            paired = checked(
                await generator.pair(url, args.pairs, args.concurrency), args.pairs, "pairing"
            )
            after = mark(self.servers, generator, proc)
            stats = await redis.info("commandstats")
            calls = sum(v["calls"] for k, v in stats.items() if k not in OWN_COMMANDS)
            row = {
                "pairing_s": paired.seconds,
                "server_ms_per_pair": (after.server - before.server) / args.pairs * 1e3,
                "redis_ms_per_pair": (after.redis - before.redis) / args.pairs * 1e3,
                "generator_ms_per_pair": (after.generator - before.generator) / args.pairs * 1e3,
                "machine_idle_pct": before.idle_pct(after),
                "redis_commands_per_pair": calls / args.pairs,
                **{f"{step}_ms": ms for step, ms in paired.steps.items()},
            }
            if args.reconnects:
                churned = checked(
                    await generator.churn(url, args.reconnects, args.concurrency),
                    args.reconnects,
                    "reconnects",
                )
                back = mark(self.servers, generator, proc)
                row["server_us_per_reconnect"] = (back.server - after.server) / churned.count * 1e6
                row.update({f"reconnect_{step}_ms": ms for step, ms in churned.steps.items()})
                after = back
            if args.check_in:
                looped = await generator.loop(args.check_in)
                if not looped.count or looped.errors:
                    raise RuntimeError(f"check-ins: {looped.count}, {looped.errors}")
                done = mark(self.servers, generator, proc)
                row["server_us_per_check_in"] = (done.server - after.server) / looped.count * 1e6
                row["redis_us_per_check_in"] = (done.redis - after.redis) / looped.count * 1e6
        finally:
            await generator.close()
            stop(proc, kill=True)
        return row

    async def warm(self, proc: subprocess.Popen[bytes], url: str) -> None:
        """Pair --warm pairs on this process and close them; return once the server has
        handled their disconnects (its CPU still for half a second), which would otherwise
        be counted in the pairing measured next."""
        args = self.args
        checked(await self.generator.pair(url, args.warm, args.concurrency), args.warm, "warm")
        await self.generator.close()
        cpu = process_cpu(proc.pid)
        for _ in range(60):
            await asyncio.sleep(0.5)
            now = process_cpu(proc.pid)
            if now - cpu < 0.01:
                return
            cpu = now
        raise RuntimeError("the server kept busy after the warm-up's pairs were closed")


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def table(names: list[str], medians: dict[str, dict[str, float]]) -> str:
    keys = list(next(iter(medians.values())))
    width = max(len(key) for key in keys)
    lines = [" ".join([" " * width, *(f"{name[-14:]:>14}" for name in names)])]
    for key in keys:
        lines.append(" ".join([key.ljust(width), *(f"{medians[n][key]:14.3f}" for n in names)]))
    return "\n".join(lines)


async def main() -> int:
    args = arguments()
    raise_fd_limit()
    runs: list[tuple[str, str, Path | None]] = [(str(tree), "ours", tree) for tree in args.tree]
    if args.against_node is not None:
        runs.append(("node", "node", None))
    print(f"our servers run with raised per-address quotas: {RAISED_QUOTAS}", flush=True)
    if args.warm:
        warm = f"each process pairs (and closes) {args.warm} pairs before it is measured"
        print(warm, flush=True)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
    with tempfile.TemporaryDirectory() as workdir:
        servers = Servers(Path(workdir), args.against_node)
        redis = await servers.wait_redis()
        generator = await NodeGenerator.start()
        try:
            targets = [(kind, root) for _, kind, root in runs]
            await warm_up(servers, redis, generator, targets, args.pairs, args.concurrency)
            rounds = Rounds(servers, redis, generator, args)
            for index in range(args.rounds):
                for name, kind, root in runs:
                    row = await rounds.one(kind, root)
                    rows[name].append(row)
                    shown = {key: round(value, 3) for key, value in row.items()}
                    print(f"round {index + 1}/{args.rounds} {name}: {shown}", flush=True)
        finally:
            await generator.stop()
            await redis.aclose()
            servers.close()
    names = [name for name, _, _ in runs]
    medians = {name: median_row(rows[name]) for name in names}
    print(f"\nmedians of {args.rounds} rounds\n" + table(names, medians))
    if "node" in rows:
        for name in names[:-1]:
            ratios = [
                round(ours["pairing_s"] / node["pairing_s"], 3)
                for ours, node in zip(rows[name], rows["node"], strict=True)
            ]
            median = medians[name]["pairing_s"] / medians["node"]["pairing_s"]
            print(f"{name}: pairing time / Node's {median:.3f} (rounds: {ratios})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
