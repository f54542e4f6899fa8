"""The test harness itself: private Redis, server process control, environment."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.nodeclient import ConnectError
from tests.support.processes import RedisServer, ServerProcess, free_port


def test_parallel_workers_take_their_ports_from_blocks_of_their_own(monkeypatch):
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    blocks = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        blocks.append(processes._port_block())
    # Side by side, below the range the kernel hands out to outgoing connections.
    assert [end for _, end in blocks[:-1]] == [start for start, _ in blocks[1:]]
    assert blocks[-1][1] <= ephemeral and blocks[0][0] >= 1024
    assert all(end - start >= 1000 for start, end in blocks)


def test_free_ports_come_in_turn_from_this_workers_block_and_skip_one_in_use():
    start, end = processes._BLOCK
    first = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # were it in TIME_WAIT
        taken.bind(("127.0.0.1", start + (first - start + 1) % (end - start)))
        taken.listen()
        second = free_port()
    assert start <= first < end and start <= second < end
    # Further on (the next one was in use; others may be in TIME_WAIT from an earlier run).
    assert 2 <= (second - first) % (end - start) < 100


def test_redis_restarts_on_the_same_port_and_keeps_its_append_only_file(make_redis_server):
    redis = make_redis_server(appendonly=True)
    port = redis.port
    assert redis.command("SET", "k", "v") == "+OK"

    redis.kill()
    redis.start()

    assert redis.port == port
    assert redis.command("GET", "k") == "$1"  # a bulk string of length 1: "v" survived


def test_redis_without_append_only_file_loses_its_data_on_restart(redis_server: RedisServer):
    redis_server.command("SET", "k", "v")

    assert redis_server.stop() == 0
    redis_server.start()

    assert redis_server.command("GET", "k") == "$-1"  # nil


def test_the_server_environment_drops_redis_url_when_none(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")

    env = ServerProcess(tmp_path / "log", redis_url=None, env={"EXTRA": "1"}).environment()

    assert "REDIS_URL" not in env
    assert env["HOST"] == "127.0.0.1" and env["LOG_LEVEL"] == "DEBUG" and env["EXTRA"] == "1"
    assert env["PORT"].isdigit()


async def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path):
    doomed = ServerProcess(
        tmp_path / "log",
        command=[sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
    )

    with pytest.raises(RuntimeError, match=r"(?s)code 3.*boom: bad config"):
        await doomed.start()


@pytest.mark.node
async def test_connecting_to_nothing_raises_connect_error(node):
    with pytest.raises(ConnectError):
        await node.connect(f"http://127.0.0.1:{free_port()}", timeout=5)


@pytest.mark.node
async def test_a_polling_client_upgrades_and_a_killed_transport_closes_it(server, node):
    client = await node.connect(server.url, "polling")
    assert client.transport in ("polling", "websocket")  # the upgrade may already be done

    assert await client.wait_upgrade() == "websocket"
    assert await client.kill_transport() == "transport close"
    assert not client.connected
