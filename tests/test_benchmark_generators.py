"""The side-by-side benchmark's two generators (scripts/benchkit: our Python clients, and the real
socket.io-client through tests/node/loadgen.js) pair, check in and hold connections on every
transport against a real server; scripts/pairing_ab.py runs a tree in rounds and prints its
medians (smoke tests of the instruments, not measurements)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.conftest import StartServer

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@pytest.mark.parametrize("client", ["python", "node"])
async def test_a_benchmark_generator_pairs_checks_in_and_holds_connections(
    client: str, start_server: StartServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from benchkit.generators import start_generator

    server = await start_server(redis_url=redis_url, LOG_LEVEL="WARNING")
    generator = await start_generator(client)
    try:
        paired = await generator.pair(server.url, 3, 3)
        assert (paired.count, paired.errors) == (3, {})
        if client == "node":  # it times each step of a pairing (the Python generator does not)
            steps = ["connect", "registerCode", "tracker_connect", "trackCode", "setTimers"]
            assert list(paired.steps) == steps
            assert all(ms > 0 for ms in paired.steps.values())
        looped = await generator.loop(1.0)
        assert looped.errors == {}
        assert looped.count > 3  # closed loop: each pair checked in again once confirmed
        assert looped.received > 0  # our server pushes each check-in to the trackers
        if client == "node":  # trackers drop and come back (reconnectSession), in turn
            churned = await generator.churn(server.url, 5, 2)
            assert (churned.count, churned.errors) == (5, {})
            assert list(churned.steps) == ["tracker_connect", "reconnectSession"]
            again = await generator.loop(1.0)  # the new trackers hear the check-ins
            assert again.errors == {} and again.received > 0
        await generator.close()
        for mode in ("websocket", "polling", "upgrade"):
            opened = await generator.open(server.url, 3, 3, mode)
            assert (mode, opened.count, opened.errors) == (mode, 3, {})
        await generator.close()
    finally:
        await generator.stop()


async def test_the_pairing_a_b_runs_a_tree_in_rounds_and_prints_its_medians() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPTS / "pairing_ab.py"),
        # Enough pairs for the server's CPU to pass a clock tick (10 ms, the unit of
        # /proc/<pid>/stat) in every round: with 4, it sometimes read 0.0 ms per pair.
        *("--tree", str(ROOT), "--pairs", "50", "--concurrency", "5"),
        *("--rounds", "2", "--check-in", "1", "--warm", "20"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "each process pairs (and closes) 20 pairs before it is measured" in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("round ")] == [
        f"round 1/2 {ROOT}",
        f"round 2/2 {ROOT}",
    ]
    medians = text.split("medians of 2 rounds\n", 1)[1].splitlines()
    figures = {line.split()[0]: float(line.split()[1]) for line in medians[1:] if line.strip()}
    assert figures["pairing_s"] > 0
    assert figures["registerCode_ms"] > 0  # the Node generator's timing of each step
    assert figures["server_ms_per_pair"] > 0
    assert figures["redis_commands_per_pair"] > 0
    assert figures["server_us_per_check_in"] > 0
