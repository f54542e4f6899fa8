"""SIGTERM drains: events in flight are answered, every confirmed check-in is in Redis, clients
see `transport close` (so they reconnect by themselves) and the process exits 0 in time."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest
import redis.asyncio as aioredis

from tests.support.checkins import (
    POLLING_ONLY,
    UPGRADED,
    WEBSOCKET,
    connect_pairs,
    keep_checking_in,
    lost_confirmations,
    stored_last_check_in,
)
from tests.support.flows import only, pair
from tests.support.nodeclient import NodeDriver
from tests.support.processes import RedisServer, ServerProcess

SHUTDOWN_TIMEOUT = 5.0


async def terminate(server: ServerProcess) -> tuple[int, float]:
    """SIGTERM; returns the exit code and the seconds it took to exit."""
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.process.wait, SHUTDOWN_TIMEOUT + 5)
    return code, time.monotonic() - started


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_sigterm_under_load_loses_no_confirmed_check_in(
    start_server, node: NodeDriver, redis_url: str, redis: aioredis.Redis
) -> None:
    server = await start_server(redis_url, SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    loaders = await connect_pairs(node, server.url, [UPGRADED] * 10 + [WEBSOCKET] * 10)
    load = [asyncio.create_task(keep_checking_in(loader)) for loader in loaders]
    await asyncio.sleep(1.5)
    assert all(loader.confirmed for loader in loaders), "every pair checked in before SIGTERM"

    code, took = await terminate(server)
    async with asyncio.timeout(10):
        await asyncio.gather(*load)

    assert code == 0, server.log_tail()
    assert took < SHUTDOWN_TIMEOUT, f"took {took:.2f} s"
    lost, confirmed = await lost_confirmations(redis, loaders)
    assert lost == 0, f"{lost} of {confirmed} confirmed check-ins not in Redis"
    for loader in loaders:
        # One checkIn at a time: only the last may have gone unanswered (sent after the drain
        # had waited for the events in flight).
        assert len(loader.confirmed) >= loader.sent - 1, (loader.how, loader.sent)
    reasons = {loader.reason for loader in loaders}
    reasons |= {await loader.pairing.tracker.wait_disconnect() for loader in loaders}
    assert reasons == {"transport close"}
    log = server.log_text()
    assert "Traceback" not in log
    assert "Shutting down with" not in log, log  # nothing unfinished, nothing unwritten


@pytest.mark.parametrize("how", [UPGRADED, WEBSOCKET, POLLING_ONLY])
async def test_an_event_in_flight_at_sigterm_is_answered(
    start_server, node: NodeDriver, redis_server: RedisServer, how: str
) -> None:
    server = await start_server(redis_server.url, SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    (loader,) = await connect_pairs(node, server.url, [how])
    tracked, token = loader.pairing.tracked, loader.pairing.token
    # Redis holds every write for a second: the check-in below is in flight until then.
    assert redis_server.command("CLIENT", "PAUSE", "1000", "WRITE") == "+OK"
    tracked.emit("checkIn", token)
    await asyncio.sleep(0.3)

    code, took = await terminate(server)

    assert code == 0 and took < SHUTDOWN_TIMEOUT, (code, took)
    confirmed = only(await tracked.expect("checkInConfirmed", timeout=1))["timestamp"]
    reason = await tracked.wait_disconnect()
    # A client that never upgraded polls again after the reply, and finds the port closed.
    assert reason == "transport close" or (how == POLLING_ONLY and reason == "transport error")
    client = aioredis.from_url(redis_server.url)
    try:
        assert await stored_last_check_in(client, token) == confirmed
    finally:
        await client.aclose()
    assert "Traceback" not in server.log_text()


async def test_sigterm_stops_accepting_before_it_hangs_up(
    start_server, node: NodeDriver, redis_server: RedisServer
) -> None:
    server = await start_server(redis_server.url, SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    p = await pair(node, server.url, "websocket")
    assert redis_server.command("CLIENT", "PAUSE", "1000", "WRITE") == "+OK"
    p.tracked.emit("checkIn", p.token)
    await asyncio.sleep(0.3)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    # Draining: the connected clients are still being served, new ones are refused.
    assert server.running and p.tracked.connected
    assert refuses_connections(server.port)
    assert await asyncio.to_thread(server.process.wait, SHUTDOWN_TIMEOUT + 5) == 0
    assert await p.tracked.wait_disconnect() == "transport close"


async def test_a_redeploy_does_not_tell_anyone_that_the_others_left(
    start_server, node: NodeDriver, redis_url: str, transport: str
) -> None:
    server = await start_server(redis_url, SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    p = await pair(node, server.url, transport)
    assert server.stop() == 0
    await p.tracked.wait_disconnect()
    await p.tracker.wait_disconnect()
    # Both are leaving because the server is; each reconnects and finds the other again.
    assert p.tracker.received("trackedPersonDisconnected") == []
    assert p.tracked.received("trackerDisconnected") == []
