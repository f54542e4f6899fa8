"""Hostile clients (issue 11): each attack of scripts/abuse.py, at small scale, fails against our
server on a real Redis, and someone else's check-in is served meanwhile.

The attacks live in scripts/abuse.py, one place for the program and the tests; its verdicts are
decided by outcomes (a token obtained, honest clients served, memory bounded), not by our error
strings. On the code before the defences every test here fails; the last one runs the program
against the Node server, which it must report vulnerable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.support.processes import REPO_ROOT, RedisServer, ServerProcess, free_port, http_status

SCRIPT = REPO_ROOT / "scripts" / "abuse.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("abuse", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("abuse", module)
    spec.loader.exec_module(module)
    return module


abuse = load_script()


def target(server: ServerProcess, **kwargs: Any) -> Any:
    assert server.process is not None
    kwargs.setdefault("scale", abuse.SCALES["small"])
    return abuse.Target(url=server.url, pid=server.process.pid, **kwargs)


def assert_defended(result: Any) -> None:
    assert result.verdict == abuse.DEFENDED, f"{result.attack}: {result.figure}"
    assert result.bystander_ms is not None, f"the bystander was not served: {result.figure}"
    assert result.bystander_ms <= abuse.BYSTANDER_LIMIT_MS, result.figure


async def start(start_server: StartServer, redis_url: str, **env: str) -> ServerProcess:
    return await start_server(redis_url=redis_url, LOG_LEVEL="INFO", **env)


async def test_a_dropped_apps_code_gives_no_token_to_another_address(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.token_from_code(target(server))

    assert_defended(result)
    assert result.details["tokens_obtained"] == 0
    assert result.details["resumed"], "the app, back from its own address, lost its session"
    assert result.details["sweep_accepted"] <= result.details["sweep_tried"] // 10


async def test_one_address_cannot_squat_the_codes_apps_elsewhere_need(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.squat(target(server))

    assert_defended(result)
    assert result.details["apps_served"] == result.details["apps"]
    assert result.details["taken_over"] == 0


async def test_declared_binary_attachments_are_not_buffered(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.binary_attachments(target(server))

    assert_defended(result)


async def test_trackers_of_one_session_are_bounded_and_their_leaving_starves_nobody(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.trackers_per_session(target(server))

    assert_defended(result)
    assert result.details["accepted"] <= result.details["tried"] // 2


async def test_a_burst_of_events_and_a_client_that_does_not_read_starve_nobody(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.events_in_flight(target(server))

    assert_defended(result)
    assert result.details["rss_growth_mb"] < abuse.RSS_BOUND_MB


async def test_refusals_and_malformed_packets_do_not_flood_the_log(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.log_flood(target(server, log=server.log_path))

    assert_defended(result)
    assert result.details["sent"] >= abuse.SCALES["small"].log_flood // 2, result.figure


async def test_unfinished_connections_from_one_address_lock_nobody_out(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url, CONNECTIONS_PER_ADDRESS="50")
    scale = dataclasses.replace(abuse.SCALES["small"], connections=100)

    result = await abuse.connections_per_address(target(server, scale=scale))

    assert_defended(result)
    assert result.details["held"] <= 50 + 5, result.figure  # a few in the server's accept queue
    assert result.details["paired"]


async def test_a_tracker_cannot_act_as_the_tracked_person_of_its_session(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start(start_server, redis_url)

    result = await abuse.roles(target(server))

    assert_defended(result)
    assert result.details["accepted"] == []


# ------------------------------------------------------------------------ the Node server


def node_original() -> Path | None:
    """The Node server's sources, ../shared/node-original of a checkout (of the main one too,
    for a worktree nested one level deeper)."""
    for parent in REPO_ROOT.parents[:2]:
        candidate = parent / "shared" / "node-original"
        if (candidate / "server.js").is_file():
            return candidate
    return None


@pytest.fixture
def node_server(tmp_path: Path, make_redis_server: Callable[..., RedisServer]) -> Iterator[str]:
    """The Node server (its own copy, `npm ci --omit=dev`) on a private Redis; its URL."""
    source = node_original()
    if source is None:
        pytest.skip(f"no ../shared/node-original next to {REPO_ROOT} (the Node server's sources)")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm must be on PATH to run the Node server", pytrace=False)
    copy = tmp_path / "node-original"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("node_modules"))
    copy.chmod(0o755)
    for _ in range(2):  # a second try, should another npm hold the shared cache's lock
        installed = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode == 0:
            break
    else:
        pytest.fail(f"npm ci failed:\n{installed.stdout}\n{installed.stderr}", pytrace=False)
    redis = make_redis_server()
    errors = tmp_path / "node-stderr.log"
    for _ in range(3):  # a free port can be taken before node binds it: another one then
        process, url = _start_node(node, copy, redis.url, errors)
        deadline = time.monotonic() + 20
        while http_status(url + "/") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            break
        process.kill()
        process.wait()
        if "EADDRINUSE" not in errors.read_text():
            pytest.fail(
                f"the Node server did not start ({process.poll()}):\n{errors.read_text()}",
                pytrace=False,
            )
    else:
        pytest.fail(f"the Node server found no free port:\n{errors.read_text()}", pytrace=False)
    try:
        yield url
    finally:
        process.kill()
        process.wait()


def _start_node(
    node: str, copy: Path, redis_url: str, errors: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            [node, "server.js"],
            cwd=copy,
            env={**os.environ, "PORT": str(port), "REDIS_URL": redis_url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # it logs whole session tokens
            stderr=stderr,
        )
    return process, f"http://127.0.0.1:{port}"


async def test_abuse_script_reports_the_node_server_vulnerable(node_server: str) -> None:
    attacks = ["token-from-code", "squat", "binary-attachments", "connections-per-address", "roles"]
    script = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        node_server,
        "--scale",
        "small",
        "--only",
        *attacks,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(script.communicate(), 100)
    report = out.decode()

    assert script.returncode == 1, f"{report}\n{err.decode()}"
    rows = {line.split("|")[0].strip(): line for line in report.splitlines() if "|" in line}
    assert set(attacks) <= set(rows), report
    for attack in attacks:
        assert "| VULNERABLE |" in rows[attack], report
    assert "tokens obtained 2 of 2" in rows["token-from-code"], report
