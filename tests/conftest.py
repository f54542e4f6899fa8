"""Fixtures shared by the whole suite.

Processes
    make_redis_server(appendonly=False) -> RedisServer   a private redis-server per call
    redis_server                                         one private, started RedisServer
    shared_redis (session) / redis_url                   one Redis for the run, FLUSHALLed per test
    start_server(redis_url=None, **env) -> ServerProcess  `python -m server` on a free port
    server                                               a started server without Redis
Node socket.io-client
    node                                                 a started NodeDriver
    transport                                            "polling" (polling first) / "websocket"
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from server.persistence import connect
from tests.support.nodeclient import NODE_DIR, NodeDriver
from tests.support.processes import RedisServer, ServerProcess

# ------------------------------------------------------------------------- markers


# Left out of the fast run (`-m "not slow"`, which CI runs on Python 3.12 and 3.13): a browser,
# HAProxy, or several server processes that crash, drain or restart. About half the suite's time.
SLOW_MODULES = frozenset(
    {
        "test_benchmark_generators",
        "test_demo_browser",
        "test_haproxy",
        "test_instances",
        "test_instances_crashing",
        "test_instances_starting",
        "test_crashes",
        "test_relay",
        "test_kill9",
        "test_drain",
        "test_redis_restart_empty",
        "test_redis_outage",
        "test_loadtest_smoke",
        "test_chaos",
        "test_abuse",
        "test_transport_abuse",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Whatever drives the Node client is a node test, marked or not.
        if "node" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.node)
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory: ``make_redis_server(appendonly=True)`` starts a private redis-server."""
    servers: list[RedisServer] = []

    def make(*, appendonly: bool = False) -> RedisServer:
        redis = RedisServer(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(redis)
        try:
            return redis.start()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)

    yield make
    for redis in servers:
        redis.kill()


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A private redis-server for a test that stops, kills or restarts it."""
    return make_redis_server()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run, for tests that never fault Redis."""
    redis = RedisServer(tmp_path_factory.mktemp("shared-redis"))
    try:
        redis.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield redis
    redis.stop()


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    """URL of the shared Redis, emptied before the test."""
    if not shared_redis.running:
        shared_redis.start()
    shared_redis.flushall()
    return shared_redis.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the shared Redis that reads what the server wrote, as strings."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def server_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the shared Redis made as the server makes its own (bytes, blocking pool),
    for the server's Redis classes used directly."""
    client = connect(redis_url, timeout=2, max_connections=8)
    yield client
    await client.aclose()


# -------------------------------------------------------------------------- Server

StartServer = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
def websocket_driver() -> str:
    """WEBSOCKET_DRIVER of the servers start_server starts: the environment's, else lean. A
    module overrides it with both (as test_compat_pairing.py does) to run on each."""
    return os.environ.get("WEBSOCKET_DRIVER", "lean")


@pytest.fixture
async def start_server(
    tmp_path: Path, request: pytest.FixtureRequest, websocket_driver: str
) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(redis_url=None, **env)`` starts the server under test
    on a free port; every server it started is stopped when the test ends (and its log tail
    is printed when the test failed)."""
    servers: list[ServerProcess] = []

    async def start(redis_url: str | None = None, **env: str | None) -> ServerProcess:
        env = {"WEBSOCKET_DRIVER": websocket_driver, **env}
        server = ServerProcess(
            tmp_path / f"server-{len(servers)}.log", redis_url=redis_url, env=env
        )
        servers.append(server)
        return await server.start()

    yield start
    problems = []
    for server in servers:
        try:
            if server.running:
                server.stop()
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            server.kill()
        if _failed(request) or problems:
            print(f"----- {server.log_path.name} (port {server.port}) -----")
            print(server.log_tail(80))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
async def server(start_server: StartServer) -> ServerProcess:
    """The server under test, in memory only (no REDIS_URL)."""
    return await start_server()


# ---------------------------------------------------------------------------- Node


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Makes sure tests/node/node_modules exists (runs `npm ci` once if it does not)."""
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the compatibility tests need Node.js 20+", False)
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"npm is not on PATH; cannot install {NODE_DIR}/node_modules", False)
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(
                f"`npm ci` in {NODE_DIR} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
    return NODE_DIR / "node_modules"


@pytest.fixture
async def node(node_modules: Path, request: pytest.FixtureRequest) -> AsyncIterator[NodeDriver]:
    """A running Node driver; every socket it opened is closed at the end of the test."""
    driver = NodeDriver()
    await driver.start()
    yield driver
    await driver.close()
    if _failed(request) and driver.stderr_tail():
        print("----- node driver stderr -----")
        print(driver.stderr_tail())


@pytest.fixture(params=["polling", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    """How the Node client connects: "polling" (polling first, then upgrade, like the apps)
    or "websocket" (websocket only)."""
    return str(request.param)
