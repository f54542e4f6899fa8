"""Small building blocks of the All Is Well flows, on top of NodeClient."""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.support.nodeclient import NodeClient, NodeDriver

TOKEN_RE = re.compile(r"^[0-9a-f]{64}$")
CODE_TTL_MS = 5 * 60 * 1000
SESSION_TTL_S = 30 * 24 * 3600  # 2592000

_used_codes: set[str] = set()

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], within: float = 2.0
) -> T:
    """Polls ``probe()`` until ``predicate`` holds for its value; returns that value.
    For state the server writes asynchronously (Redis)."""
    async with asyncio.timeout(within):
        while not predicate(value := await probe()):
            await asyncio.sleep(0.05)
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def new_code() -> str:
    """A fresh 6-digit code (never the same twice in one test run)."""
    while True:
        code = str(random.randint(100000, 999999))
        if code not in _used_codes:
            _used_codes.add(code)
            return code


def unknown_token() -> str:
    """Well-formed (64 lowercase hex) but belongs to no session."""
    return secrets.token_hex(32)


def only(args: list[Any]) -> Any:
    """The single payload of an event (fails if there is not exactly one)."""
    assert len(args) == 1, f"expected exactly one payload argument, got {args!r}"
    return args[0]


def assert_recent(timestamp: Any, before: int, slack_ms: int = 2000) -> None:
    """An integer millisecond timestamp taken between ``before`` and now."""
    assert isinstance(timestamp, int) and not isinstance(timestamp, bool), timestamp
    assert before - slack_ms <= timestamp <= now_ms() + slack_ms, (timestamp, before, now_ms())


async def expect_error(client: NodeClient, message: str) -> None:
    args = await client.expect("error")
    assert args == [message], f"expected error {message!r}, got {args!r}"


async def register(client: NodeClient, code: str | None = None) -> tuple[str, dict[str, Any]]:
    """registerCode on ``client``; returns (code, codeRegistered payload)."""
    code = code or new_code()
    client.emit("registerCode", code)
    payload = only(await client.expect("codeRegistered"))
    return code, payload


async def track(tracked: NodeClient, tracker: NodeClient, code: str) -> str:
    """trackCode on ``tracker``; checks trackingStarted and the tracked side's
    trackerConnected, and returns the session token."""
    tracker.emit("trackCode", code)
    token = only(await tracker.expect("trackingStarted"))["sessionToken"]
    notice = only(await tracked.expect("trackerConnected"))
    assert notice["sessionToken"] == token, notice
    return token


@dataclass
class Pairing:
    tracked: NodeClient
    tracker: NodeClient
    code: str
    token: str


async def pair(node: NodeDriver, url: str, transport: str) -> Pairing:
    """A tracked person with one tracker, both connected with ``transport``."""
    tracked = await node.connect(url, transport)
    tracker = await node.connect(url, transport)
    code, _ = await register(tracked)
    token = await track(tracked, tracker, code)
    return Pairing(tracked, tracker, code, token)


async def check_in(tracked: NodeClient, token: str) -> int:
    """checkIn; returns the confirmed timestamp."""
    tracked.emit("checkIn", token)
    return int(only(await tracked.expect("checkInConfirmed"))["timestamp"])


async def rejoin_as_tracker(
    node: NodeDriver, url: str, transport: str, token: str, last: int
) -> NodeClient:
    """A new tracker socket reconnects to the session: sessionReconnected, then the last
    check-in (checked); returns the socket."""
    tracker = await node.connect(url, transport)
    tracker.emit("reconnectSession", {"sessionToken": token, "role": "tracker"})
    assert only(await tracker.expect("sessionReconnected")) == {
        "sessionToken": token,
        "role": "tracker",
    }
    assert only(await tracker.expect("checkInReceived")) == {
        "sessionToken": token,
        "timestamp": last,
    }
    return tracker


def instance_of(client: NodeClient) -> str:
    """The server instance that made the client's socket id (`<instance>.<random>`)."""
    assert client.sid is not None and "." in client.sid, client
    return client.sid.split(".", 1)[0]
