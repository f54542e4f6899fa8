"""The chaos run in its bounded CI mode: three fixed seeds, 10 clients on 2 instances and one
Redis, 25 s of random protocol actions under faults each (SIGTERM and kill -9 of an instance, a
stalled Redis); every invariant must hold.

With Redis restarted empty as well, one seed runs as a known failure (not strict: it passes
often): after the restart, a missed check-in whose deadline a change held during the outage had
moved can be fired on another instance's stale copy, and the moved one is then not pushed. Open
in issue 12; `scripts/chaos.py --seed 7` shows it.

Each seed runs `scripts/chaos.py` as a process of its own (its clients, servers and Redis start
and stop with it); its output, which names the seed and each failing invariant's evidence, is
shown when the test fails. The checker itself is tested in test_chaos_checker.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.chaos_checker import CHECKS
from tests.support.processes import REPO_ROOT

# Between them: sigterm, kill9 and redis-stall (tests/support/chaos_plan.py draws them from
# the seed, among the faults allowed).
SEEDS = (5, 7, 4)
SECONDS = 25
SETTLE = 7


FAULTS = "sigterm,kill9,redis-stall"
EVERY_FAULT = "sigterm,kill9,redis-stall,redis-restart"


@pytest.mark.timeout(SECONDS + 2 * SETTLE + 90)
@pytest.mark.parametrize(
    ("seed", "faults"),
    [
        *((seed, FAULTS) for seed in SEEDS),
        pytest.param(
            7,
            EVERY_FAULT,
            marks=pytest.mark.xfail(
                strict=False,
                reason="open (issue 12): a missed check-in moved by a change held while Redis "
                "restarted empty can go unpushed",
            ),
        ),
    ],
)
def test_the_server_keeps_its_promises_through_a_chaos_run(
    seed: int, faults: str, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "chaos.py"),
        f"--seed={seed}",
        "--clients=10",
        "--instances=2",
        f"--seconds={SECONDS}",
        f"--settle={SETTLE}",
        f"--faults={faults}",
        f"--workdir={tmp_path}",
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 2 * SETTLE + 80,
    )
    report = result.stdout + result.stderr
    assert f"seed {seed}" in report.splitlines()[0], report
    verdicts = [line for line in report.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == len(CHECKS), report  # every invariant was checked
    assert result.returncode == 0, report
