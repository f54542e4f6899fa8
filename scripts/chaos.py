"""Chaos run: real Socket.IO clients doing random protocol actions against 2-3 server instances
and one Redis while instances are killed and restarted and Redis stalls and restarts empty; then
a checker verifies the server's promises over what every client saw and over Redis.

    .venv/bin/python scripts/chaos.py --seed 7 --clients 20 --instances 3 --seconds 60

It prints its seed first; the same seed replays the same actions and faults (their timing, and so
the server's answers, differ from run to run). Exit code 0 when every invariant holds. Loopback
only; bounded in time (about seconds + 2 x settle + start-up).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chaos_checker import check  # noqa: E402
from tests.support.chaos_history import History  # noqa: E402
from tests.support.chaos_plan import parse_faults  # noqa: E402
from tests.support.chaos_run import Options, run_sync  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--instances", type=int, default=3, choices=(1, 2, 3, 4))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--faults", default="all", help="all, none, or a list of sigterm,kill9,redis-stall,..."
    )
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--memory-slack-mb", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=None, help="logs and history.json")
    parser.add_argument(
        "--recheck", type=Path, default=None, help="only check a history.json of an earlier run"
    )
    args = parser.parse_args(argv)
    if args.recheck is not None:
        history = History.load(args.recheck.read_text())
        print(f"chaos: seed {history.seed}: checking {args.recheck}")
        verdicts = check(history)
        for verdict in verdicts:
            print(verdict.render())
        return 0 if all(v.ok for v in verdicts) else 1
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    verdicts = run_sync(
        Options(
            seed=seed,
            clients=args.clients,
            instances=args.instances,
            seconds=args.seconds,
            faults=parse_faults(args.faults),
            settle=args.settle,
            memory_slack_mb=args.memory_slack_mb,
            workdir=args.workdir,
        )
    )
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
