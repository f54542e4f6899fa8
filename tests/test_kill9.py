"""kill -9 mid-load: a check-in is confirmed only once Redis has it, so none that was confirmed
is lost when the process dies without any chance to flush."""

from __future__ import annotations

import asyncio
import json

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
from tests.support.flows import eventually
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
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


async def keep_setting_timers(client: NodeClient, token: str, stop: asyncio.Event) -> int:
    """setTimers, wait for timersSet, again, until told to stop; returns how many were set."""
    done = 0
    while not stop.is_set():
        client.emit(
            "setTimers", {"sessionToken": token, "reminderTimeMinutes": 60, "alertTimeMinutes": 120}
        )
        await client.expect("timersSet")
        done += 1
    return done


async def test_kill_9_of_one_instance_while_another_changes_the_same_sessions(
    start_server, node: NodeDriver, redis_server: RedisServer
) -> None:
    """Check-ins on A, setTimers for the same sessions on B (each a write of B's copy of the
    record), then A is killed: no check-in A confirmed is lost, to the kill or to B's writes,
    and every change B confirmed is there too."""
    a = await start_server(redis_server.url)
    b = await start_server(redis_server.url)
    await eventually(
        lambda: scrape(b.url), lambda s: value(s, "alliswell_instances_alive") == 2, within=5
    )
    loaders = await connect_pairs(node, a.url, [WEBSOCKET] * 10)
    setters = [await node.connect(b.url, "websocket") for _ in loaders]
    load = [asyncio.create_task(keep_checking_in(loader)) for loader in loaders]
    stop = asyncio.Event()
    timers = [
        asyncio.create_task(keep_setting_timers(setter, loader.pairing.token, stop))
        for setter, loader in zip(setters, loaders, strict=True)
    ]
    await asyncio.sleep(2.0)
    a.kill()
    async with asyncio.timeout(10):
        await asyncio.gather(*load)
    stop.set()
    set_on_b = await asyncio.wait_for(asyncio.gather(*timers), 10)
    assert all(set_on_b), set_on_b

    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        lost, confirmed = await lost_confirmations(client, loaders)
        records = [
            json.loads(await client.get(f"session:{loader.pairing.token}")) for loader in loaders
        ]
    finally:
        await client.aclose()
    conflicts = value(await scrape(b.url), "alliswell_write_conflicts_total")
    print(
        f"\nkill -9 of one of two instances: {lost} of {confirmed} confirmed check-ins lost; "
        f"{sum(set_on_b)} setTimers on the other, {conflicts:.0f} write conflicts there"
    )
    assert lost == 0, f"{lost} of {confirmed} confirmed check-ins not in Redis"
    assert all(r["reminderTimeMinutes"] == 60 and r["alertTimeMinutes"] == 120 for r in records)
    assert conflicts > 0  # B's copies were out of date, really: the race was run
