"""The pipelined connection for the per-event scripts (server/redislane.py), against a real
redis-server: replies in order and as redis-py gives them, failures as redis-py raises them."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.persistence import connect
from server.redislane import _INCOMPLETE, Lane, parse
from tests.support.processes import RedisServer

# Replies of every kind a script gives: integers, bulk strings, nil, nested arrays, status.
SHAPES = """
local n = tonumber(ARGV[1])
if n % 5 == 0 then return n end
if n % 5 == 1 then return ARGV[2] end
if n % 5 == 2 then return false end
if n % 5 == 3 then return {n, ARGV[2], {false, n * 2, 'x'}, {}} end
return redis.status_reply('OK')
"""
FAILS = "return redis.error_reply('WRONG ' .. ARGV[1])"


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, Lane]]:
    redis = connect(redis_url, timeout=2, max_connections=4)
    lane = Lane(redis, 2.0)
    yield redis, lane
    await lane.close()
    await redis.aclose()


async def test_replies_come_back_in_order_as_redis_py_gives_them(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    redis, lane = clients
    ours, theirs = lane.register_script(SHAPES), redis.register_script(SHAPES)
    values = [(n, ("v" * (n % 7)) + "\r\n$*:-+é") for n in range(300)]
    got = await asyncio.gather(*(ours(keys=[], args=[n, text]) for n, text in values))
    expected = [await theirs(keys=[], args=[n, text]) for n, text in values]
    assert got == expected
    assert {type(value) for value in got} == {int, bytes, type(None), list}


async def test_an_error_reply_fails_its_own_call_only(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    _, lane = clients
    shapes, fails = lane.register_script(SHAPES), lane.register_script(FAILS)
    results = await asyncio.gather(
        shapes(args=[1, "before"]),
        fails(args=["one"]),
        shapes(args=[1, "after"]),
        return_exceptions=True,
    )
    assert results[0] == b"before"
    assert isinstance(results[1], ResponseError) and "WRONG one" in str(results[1])
    assert results[2] == b"after"


async def test_a_script_redis_does_not_know_is_sent_in_full(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    redis, lane = clients
    script = lane.register_script(SHAPES)
    assert await script(args=[0, ""]) == 0
    await redis.script_flush()  # as after a restart of Redis
    assert await redis.script_exists(script.sha) == [False]
    assert await script(args=[10, ""]) == 10
    assert await redis.script_exists(script.sha) == [True]


def test_a_reply_split_anywhere_is_read_whole() -> None:
    first = b"*4\r\n:7\r\n$5\r\nab\r\nc\r\n*2\r\n$-1\r\n+OK\r\n*0\r\n"
    stream = first + b"-ERR no\r\n"
    for cut in range(len(first)):
        value, after = parse(stream[:cut], 0)
        assert value is _INCOMPLETE and after == 0
    value, after = parse(stream, 0)
    assert value == [7, b"ab\r\nc", [None, b"OK"], []] and after == len(first)
    error, end = parse(stream, after)
    assert isinstance(error, ResponseError) and end == len(stream)


async def test_calls_fail_as_connection_errors_while_redis_is_gone_then_work_again(
    redis_server: RedisServer,
) -> None:
    redis = connect(redis_server.url, timeout=1, max_connections=2)
    lane = Lane(redis, 1.0)
    script = lane.register_script(SHAPES)
    try:
        assert await script(args=[1, "up"]) == b"up"
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await script(args=[1, "down"])
        assert time.monotonic() - started < 1.5
        redis_server.start()
        assert await script(args=[1, "back"]) == b"back"
    finally:
        await lane.close()
        await redis.aclose()


async def test_a_stalled_redis_fails_the_waiting_calls_after_the_timeout(tmp_path: Path) -> None:
    # DEBUG SLEEP needs the debug command enabled: a server of its own.
    server = RedisServer(tmp_path, extra_args=("--enable-debug-command", "local")).start()
    redis = connect(server.url, timeout=0.3, max_connections=2)
    sleeper = connect(server.url, timeout=5, max_connections=1)
    lane = Lane(redis, 0.3)
    script = lane.register_script(SHAPES)
    try:
        assert await script(args=[1, "up"]) == b"up"
        sleeping = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", "3"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        results = await asyncio.gather(
            *(script(args=[1, str(n)]) for n in range(5)), return_exceptions=True
        )
        waited = time.monotonic() - started
        # Each call waited its timeout, then once more on a new connection (whose handshake
        # is not answered either), as with redis-py's own retry.
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        assert 0.3 < waited < 2.5
        await sleeping
        assert await script(args=[1, "awake"]) == b"awake"
    finally:
        await lane.close()
        await redis.aclose()
        await sleeper.aclose()
        server.kill()


async def test_a_cancelled_call_leaves_the_next_reply_to_the_next_call(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    _, lane = clients
    script = lane.register_script(SHAPES)
    first = asyncio.create_task(script(args=[1, "first"]))
    await asyncio.sleep(0)  # sent
    first.cancel()
    assert await script(args=[1, "second"]) == b"second"
    assert first.cancelled()


async def test_closing_leaves_no_connection_open(redis_url: str) -> None:
    redis = connect(redis_url, timeout=2, max_connections=2)
    lane = Lane(redis, 2.0)
    script = lane.register_script(SHAPES)
    assert await script(args=[1, "x"]) == b"x"
    clients_before = len(await redis.client_list())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await lane.close()
        await asyncio.sleep(0.1)
        gc.collect()
    assert len(await redis.client_list()) == clients_before - 1
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    with pytest.raises(RedisConnectionError):
        await script(args=[1, "closed"])
    await redis.aclose()


async def test_the_commands_of_one_turn_of_the_loop_go_in_one_write(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    _, lane = clients
    script = lane.register_script(SHAPES)
    assert await script(args=[1, "connected"]) == b"connected"
    pipe = lane._pipe
    assert pipe is not None and pipe.transport is not None
    writes: list[bytes] = []
    write = pipe.transport.write
    pipe.transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
    got = await asyncio.gather(*(script(args=[1, str(n)]) for n in range(50)))
    assert got == [str(n).encode() for n in range(50)]
    assert len(writes) == 1 and writes[0].count(b"EVALSHA") == 50


# A connection dropped silently while idle is found by the kernel within this many seconds.
IDLE_PEER_FOUND_WITHIN_SECONDS = 60


async def test_connections_to_redis_probe_an_idle_peer(
    clients: tuple[aioredis.Redis, Lane],
) -> None:
    """A connection dropped silently while no event came (a NAT or a proxy that forgot it, a
    host gone) is found by TCP keepalive within a minute and closed, so the next check-in gets
    a new connection instead of waiting out REDIS_TIMEOUT on the dead one; the probes also
    keep such middleboxes from forgetting it. redis-py 8 asks for it by default (idle 30 s,
    then 3 probes 5 s apart), for the pool's connections and so for the lane's, which is made
    from the pool's settings: this holds it to that (redis-py 5 asked for none)."""
    redis, lane = clients
    assert await lane.call("PING") in (b"PONG", "PONG")
    assert await redis.ping()
    assert lane._pipe is not None and lane._pipe.transport is not None
    sockets = {"lane": lane._pipe.transport.get_extra_info("socket")}
    connection = await redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert connection._writer is not None
        sockets["pool"] = connection._writer.transport.get_extra_info("socket")
        for name, sock in sockets.items():
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, name
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert idle + interval * probes <= IDLE_PEER_FOUND_WITHIN_SECONDS, name
    finally:
        await redis.connection_pool.release(connection)
