"""The side-by-side benchmark's two generators (scripts/benchkit: our Python clients, and the real
socket.io-client through tests/node/loadgen.js) pair, check in and hold connections on every
transport against a real server (a smoke test of the instrument, not a measurement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartServer

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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
        await generator.close()
        for mode in ("websocket", "polling", "upgrade"):
            opened = await generator.open(server.url, 3, 3, mode)
            assert (mode, opened.count, opened.errors) == (mode, 3, {})
        await generator.close()
    finally:
        await generator.stop()
