"""The pings of Engine.IO sessions on long-polling, for all of them at once.

engine.io pings a session with a task per ping cycle: after each pong, a task that sleeps
`ping_interval` seconds, then queues a PING. A client that stays on polling always holds one:
its task, coroutine, sleep timer and future, ~1.2 KB of its ~19 KB (tracemalloc). Here the
sessions due in each tick of time wait in one list, and one task queues their PINGs, as
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

log = logging.getLogger(__name__)


class PollingPings:
    """Queues a PING `interval` s after `schedule` (within one `tick` more) for each session."""

    def __init__(
        self,
        interval: float,
        *,
        tick: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        # A quarter of the interval at most, so that a short one (tests) keeps its pace.
        self.tick = tick if tick is not None else min(1.0, interval / 4)
        self.clock = clock
        self._slots: dict[int, list[Any]] = {}
        self._next = math.floor(clock() / self.tick)

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def schedule(self, socket: Any) -> None:
        """Ping `socket` (engine.io's AsyncSocket) one interval from now."""
        slot = max(math.ceil((self.clock() + self.interval) / self.tick), self._next)
        self._slots.setdefault(slot, []).append(socket)

    async def ping_due(self) -> None:
        """Queue the PING of every session due by now, as engine.io's `_send_ping` does once
        it has slept: not to a session closing or closed."""
        due = math.floor(self.clock() / self.tick)
        if not self._slots:  # nobody waits: no tick to look at (however long it has been)
            self._next = max(self._next, due + 1)
            return
        while self._next <= due:
            sockets = self._slots.pop(self._next, ())
            self._next += 1
            for socket in sockets:
                if socket.closing or socket.closed:
                    continue
                socket.last_ping = time.time()
                try:
                    # engine.io's send: closes a session whose last ping went unanswered,
                    # else queues the packet (on an upgraded session, its WebSocket's queue).
                    await socket.send(eio.Packet(eio.PING))
                except Exception:
                    log.exception("Pinging %s failed", socket.sid)

    async def run(self) -> None:
        """Every `tick` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.tick)
            await self.ping_due()
