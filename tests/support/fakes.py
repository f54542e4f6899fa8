"""In-process stand-ins for the two things handlers touch outside themselves: time and sockets;
and time passing for heartbeats."""

from __future__ import annotations

import asyncio
from typing import Any

from server.instances import Instances
from server.models import Session

START = 1_800_000_000_000


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class FakeSocketIO:
    """What Events and Alerts need of python-socketio: handlers, rooms, emit to a sid or room."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []  # (sid, event, data)
        self.rooms: dict[str, set[str]] = {}
        self.handlers: dict[str, Any] = {}
        self.manager = self  # python-socketio's manager: what deliver() tells (`watch`)
        self.watch: Any = None

    def on(self, event: str, handler: Any) -> None:
        self.handlers[event] = handler

    async def enter_room(self, sid: str, room: str) -> None:
        self.rooms.setdefault(room, set()).add(sid)

    async def leave_room(self, sid: str, room: str) -> None:
        self.rooms.get(room, set()).discard(sid)

    async def emit(self, event: str, data: Any = None, to: str | None = None, **_: Any) -> None:
        assert to is not None
        if self.watch is not None:
            self.watch(event, to, data)
        for sid in sorted(self.rooms.get(to, {to})):
            self.sent.append((sid, event, data))

    def leave_all(self, sid: str) -> None:
        for members in self.rooms.values():
            members.discard(sid)

    def to(self, sid: str, event: str | None = None) -> list[Any]:
        """Payloads sent to `sid` (of `event`, if given)."""
        return [data for to, name, data in self.sent if to == sid and event in (None, name)]


async def beat_alone(instance: Instances, clock: FakeClock) -> None:
    """Time passes and only `instance` beats, until the others count dead. Heartbeats are
    scored by Redis's clock, so the time really passes (make `alive_ms` short); `clock` moves
    as much."""
    step_ms = instance.alive_ms // 4  # often enough that `instance` never misses a beat itself
    for _ in range(6):
        await asyncio.sleep(step_ms / 1000)
        clock.now += step_ms
        await instance.beat()


MIN = 60_000


def armed(alert_end: int) -> Session:
    """A session with timers set whose alert falls due at `alert_end` (its reminder a minute
    before, its last check-in two minutes before that)."""
    return Session(
        reminder_time_minutes=1,
        alert_time_minutes=2,
        reminder_time_end=alert_end - MIN,
        alert_time_end=alert_end,
        settings_configured=True,
        last_check_in=alert_end - 2 * MIN,
    )
