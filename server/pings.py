"""The pings of Engine.IO sessions on long-polling, for all of them at once.

engine.io pings a session with a task per ping cycle: after each pong, a task that sleeps
`ping_interval` seconds, then queues a PING. A client that stays on polling always holds one:
its task, coroutine, sleep timer and future, ~1.2 KB of its ~19 KB (tracemalloc). Here the
sessions due in each tick of time wait in one slot of a wheel, and one task queues their PINGs, as
engine.io's task would have. WebSockets have their own wheel (websocket.Heartbeat), which
takes over from here at an upgraded session's first pong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from engineio import packet as eio

from .wheel import Wheel

log = logging.getLogger(__name__)


class PollingPings:
    """Queues a PING `interval` s after `schedule` (within one tick more) for each session."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        # A quarter of the interval at most, so that a short one (tests) keeps its pace.
        self.tick = min(1.0, interval / 4)
        self.clock = clock
        self._wheel: Wheel[Any] = Wheel(self.tick, clock())

    def __len__(self) -> int:
        return len(self._wheel)

    def schedule(self, socket: Any) -> None:
        """Ping `socket` (engine.io's AsyncSocket) one interval from now."""
        self._wheel.file(socket, self._wheel.slot(self.clock() + self.interval))

    async def ping_due(self) -> None:
        """Queue the PING of every session due by now (never early), as engine.io's
        `_send_ping` does once it has slept: not to a session closing or closed."""
        for socket in self._wheel.take(math.floor(self.clock() / self.tick)):
            if socket.closing or socket.closed:
                continue
            socket.last_ping = time.time()
            try:
                # engine.io's send: closes a session whose last ping went unanswered, else
                # queues the packet (on an upgraded session, its WebSocket's queue).
                await socket.send(eio.Packet(eio.PING))
            except Exception:
                log.exception("Pinging %s failed", socket.sid)

    async def run(self) -> None:
        """Every tick, until cancelled."""
        while True:
            await asyncio.sleep(self.tick)
            await self.ping_due()
