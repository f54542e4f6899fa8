"""scripts/loadtest.py runs end to end against a real server with Redis (a smoke test, not a
measurement: benchmarks are programs, see scripts/benchmark.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import StartServer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "loadtest.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loadtest", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("loadtest", module)
    spec.loader.exec_module(module)
    return module


async def test_the_load_test_pairs_checks_in_and_reports(
    start_server: StartServer, redis_url: str
) -> None:
    loadtest = load_script()
    server = await start_server(redis_url=redis_url, LOG_LEVEL="WARNING")
    config = loadtest.Config(url=server.url, pairs=5, duration=1.5, timers=True, progress=False)

    report = await loadtest.run_load(config)

    assert report["paired"] == 5
    assert report["errors"] == {}
    assert report["confirmed"] > 0
    assert report["received"] > 0
    assert report["latency_ms"]["p50"] is not None
