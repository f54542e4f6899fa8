"""kill -9 mid-load: a check-in is confirmed only once Redis has it, so none that was confirmed
is lost when the process dies without any chance to flush."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.support.checkins import (
    POLLING_ONLY,
    UPGRADED,
    WEBSOCKET,
    connect_pairs,
    keep_checking_in,
    lost_confirmations,
)
from tests.support.nodeclient import NodeDriver
from tests.support.processes import RedisServer


@pytest.mark.parametrize("stalled", [False, True], ids=["redis-fast", "redis-stalled"])
async def test_kill_9_under_load_loses_no_confirmed_check_in(
    start_server, node: NodeDriver, redis_server: RedisServer, stalled: bool
) -> None:
    server = await start_server(redis_server.url)
    hows = [UPGRADED] * 8 + [WEBSOCKET] * 8 + [POLLING_ONLY] * 4
    loaders = await connect_pairs(node, server.url, hows)
    load = [asyncio.create_task(keep_checking_in(loader)) for loader in loaders]
    await asyncio.sleep(2.0)
    assert all(loader.confirmed for loader in loaders), "every pair checked in before the kill"

    if stalled:
        # Writes wait in Redis when the process dies, and die with its connections: a
        # check-in confirmed before its write was done would be lost now.
        assert redis_server.command("CLIENT", "PAUSE", "800", "WRITE") == "+OK"
        await asyncio.sleep(0.3)
    server.kill()
    async with asyncio.timeout(10):
        await asyncio.gather(*load)

    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        lost, confirmed = await lost_confirmations(client, loaders)
    finally:
        await client.aclose()
    where = "Redis stalled" if stalled else "Redis fast"
    print(f"\nkill -9 ({where}): {lost} of {confirmed} confirmed check-ins lost")
    assert lost == 0, f"{lost} of {confirmed} confirmed check-ins not in Redis"
