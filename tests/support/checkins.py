"""Pairs that check in as fast as they are confirmed, and what Redis holds for them afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from tests.support.flows import Pairing, pair, register, track
from tests.support.nodeclient import NodeClient, NodeDriver

# How the pairs connect: polling first and upgraded (what the apps do), WebSocket only, and
# polling only (an app whose network blocks WebSockets).
UPGRADED = "polling-first"
WEBSOCKET = "websocket"
POLLING_ONLY = "polling-only"


@dataclass
class Loader:
    pairing: Pairing
    how: str
    sent: int = 0
    reason: str | None = None  # the tracked client's disconnect reason

    @property
    def confirmed(self) -> list[int]:
        """Timestamps of every checkInConfirmed the tracked client received."""
        return [args[0]["timestamp"] for args in self.pairing.tracked.received("checkInConfirmed")]


async def connect_pairs(node: NodeDriver, url: str, hows: list[str]) -> list[Loader]:
    """One pair per entry of `hows`; polling-first pairs are waited for until upgraded."""

    async def one(how: str) -> Loader:
        if how == POLLING_ONLY:
            tracked = await node.connect(url, "polling", transports=["polling"])
            tracker = await node.connect(url, "polling", transports=["polling"])
            p = await _pair_clients(tracked, tracker)
        else:
            p = await pair(node, url, "polling" if how == UPGRADED else "websocket")
            if how == UPGRADED:
                await p.tracked.wait_upgrade()
                await p.tracker.wait_upgrade()
        return Loader(p, how)

    return list(await asyncio.gather(*(one(how) for how in hows)))


async def _pair_clients(tracked: NodeClient, tracker: NodeClient) -> Pairing:
    code, _ = await register(tracked)
    token = await track(tracked, tracker, code)
    return Pairing(tracked, tracker, code, token)


async def keep_checking_in(loader: Loader, within: float = 20.0) -> None:
    """checkIn, wait for checkInConfirmed, again, until the tracked client is disconnected."""
    tracked, token = loader.pairing.tracked, loader.pairing.token
    gone = asyncio.ensure_future(tracked.wait_disconnect(timeout=within))
    try:
        while not gone.done():
            tracked.emit("checkIn", token)
            loader.sent += 1
            reply = asyncio.ensure_future(tracked.expect("checkInConfirmed", timeout=within))
            await asyncio.wait({reply, gone}, return_when=asyncio.FIRST_COMPLETED)
            if reply.done():
                reply.result()
            else:
                reply.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reply
        loader.reason = gone.result()
    finally:
        gone.cancel()


async def stored_record(redis: aioredis.Redis, token: str) -> dict[str, Any]:
    """The session record as Redis holds it (the Node server's JSON field names)."""
    raw = await redis.get(f"session:{token}")
    assert raw is not None, f"no session:{token[:8]}… in Redis; keys: {await redis.keys('*')}"
    record: dict[str, Any] = json.loads(raw)
    return record


async def stored_last_check_in(redis: aioredis.Redis, token: str) -> int | None:
    value = (await stored_record(redis, token))["lastCheckIn"]
    return None if value is None else int(value)


async def lost_confirmations(redis: aioredis.Redis, loaders: list[Loader]) -> tuple[int, int]:
    """(confirmed check-ins newer than what Redis holds for their session, confirmed in all)."""
    lost = total = 0
    for loader in loaders:
        confirmed = loader.confirmed
        total += len(confirmed)
        stored = await stored_last_check_in(redis, loader.pairing.token)
        lost += sum(1 for at in confirmed if stored is None or at > stored)
    return lost, total
