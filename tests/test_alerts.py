"""Missed check-ins reach trackers from the server itself: the scheduler with the clock injected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from server import rules
from server.alerts import Alerts
from server.events import Events
from server.limits import AttemptLimiter
from server.models import Session
from server.store import MemoryStore
from tests.support.fakes import FakeClock, FakeSocketIO

MIN = 60_000


class Recorder:
    """Stands in for the webhook sender: remembers what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def send(self, event: str, token: str, timestamp: int) -> None:
        self.sent.append((event, token, timestamp))


class World:
    """One server in memory: a tracked socket `t` and a tracker `a` paired through a code."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sio = FakeSocketIO()
        self.store = MemoryStore(self.clock)
        self.events = Events(
            self.sio,  # type: ignore[arg-type]
            self.store,
            self.clock,
            code_grace_ms=MIN,
            limiter=AttemptLimiter(self.clock, 10),
        )
        self.events.attach()
        self.webhooks = Recorder()
        self.alerts = Alerts(self.events, self.webhooks)  # type: ignore[arg-type]
        self.token = ""

    async def send(self, sid: str, event: str, *args: Any) -> None:
        await self.sio.handlers[event](sid, *args)

    async def pair(self) -> str:
        await self.send("t", "registerCode", "123456")
        await self.send("a", "trackCode", "123456")
        self.token = self.sio.to("a", "trackingStarted")[0]["sessionToken"]
        return self.token

    async def set_timers(self, reminder: float, alert: float) -> None:
        payload = {"sessionToken": self.token, "reminderTimeMinutes": reminder}
        await self.send("t", "setTimers", {**payload, "alertTimeMinutes": alert})

    async def at(self, ms: int) -> int:
        """Move the clock to START + ms and let the scheduler run."""
        self.clock.now = 1_800_000_000_000 + ms
        return await self.alerts.run_once()

    def missed(self, sid: str = "a") -> list[Any]:
        return self.sio.to(sid, "checkInMissed")


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


async def test_a_tracker_hears_a_missed_check_in_once_at_its_due_time(world: World) -> None:
    token = await world.pair()
    await world.send("t", "checkIn", token)
    await world.set_timers(1, 2)
    await world.at(2 * MIN - 1)
    assert world.missed() == []
    await world.at(2 * MIN)
    due = 1_800_000_000_000 + 2 * MIN
    assert world.missed() == [{"sessionToken": token, "timestamp": due}]
    assert world.store.cached(token).pending_alert == due  # type: ignore[union-attr]
    assert world.webhooks.sent == [("checkInMissed", token, due)]
    await world.at(10 * MIN)
    assert len(world.missed()) == 1  # exactly once


async def test_a_check_in_clears_the_alert_and_gives_the_all_clear(world: World) -> None:
    token = await world.pair()
    await world.set_timers(1, 2)
    await world.at(3 * MIN)
    assert len(world.missed()) == 1
    await world.send("t", "checkIn", token)
    now = world.clock.now
    assert world.sio.to("a", "checkInReceived")[-1] == {"sessionToken": token, "timestamp": now}
    assert world.webhooks.sent[-1] == ("allClear", token, now)
    assert world.store.cached(token).pending_alert is None  # type: ignore[union-attr]
    # The timers are armed again from the check-in.
    await world.at(3 * MIN + 2 * MIN)
    assert world.missed()[-1]["timestamp"] == now + 2 * MIN


async def test_a_tracker_who_pairs_later_hears_the_pending_alert(world: World) -> None:
    token = await world.pair()
    await world.set_timers(1, 2)
    await world.at(2 * MIN)
    await world.send("b", "trackCode", "123456")
    assert world.missed("b") == [{"sessionToken": token, "timestamp": 1_800_000_000_000 + 2 * MIN}]


async def test_timers_changed_while_armed_rearm_without_the_old_alert(world: World) -> None:
    token = await world.pair()
    await world.send("t", "checkIn", token)
    await world.set_timers(1, 2)
    await world.at(MIN)
    await world.set_timers(1, 5)  # counts from the check-in at 0
    await world.at(4 * MIN)
    assert world.missed() == []
    await world.at(5 * MIN)
    assert [m["timestamp"] for m in world.missed()] == [1_800_000_000_000 + 5 * MIN]


async def test_the_tracked_person_is_reminded_before_the_alert(world: World) -> None:
    token = await world.pair()
    await world.send("t", "checkIn", token)
    await world.set_timers(1, 2)
    await world.at(MIN)
    assert world.sio.to("t", "checkInReminder") == [
        {
            "sessionToken": token,
            "reminderTimeEnd": 1_800_000_000_000 + MIN,
            "alertTimeEnd": 1_800_000_000_000 + 2 * MIN,
        }
    ]
    assert world.missed() == []
    await world.at(3 * MIN)
    assert len(world.sio.to("t", "checkInReminder")) == 1


async def test_no_reminder_when_the_alert_comes_first(world: World) -> None:
    await world.pair()
    await world.set_timers(5, 2)
    await world.at(10 * MIN)
    assert world.sio.to("t", "checkInReminder") == []
    assert len(world.missed()) == 1


async def test_a_session_that_never_checked_in_alerts_from_when_timers_were_set(
    world: World,
) -> None:
    token = await world.pair()
    await world.at(MIN)
    await world.set_timers(1, 2)
    await world.at(3 * MIN)
    assert world.missed() == [{"sessionToken": token, "timestamp": 1_800_000_000_000 + 3 * MIN}]
    # statusUpdate keeps PROTOCOL.md's meaning: no check-in, so alertExpired is false.
    await world.send("a", "getStatus", {"sessionToken": token})
    assert world.sio.to("a", "statusUpdate")[-1]["alertExpired"] is False


async def test_without_timers_nothing_is_armed(world: World) -> None:
    token = await world.pair()
    await world.send("t", "checkIn", token)
    assert len(world.store.deadlines) == 0
    assert await world.at(100 * MIN) == 0


async def test_a_deadline_of_a_session_that_expired_fires_nothing(world: World) -> None:
    token = await world.pair()
    await world.set_timers(1, 2)
    world.store._forget(token)  # what the 30-day expiry does
    assert await world.at(3 * MIN) == 2  # the reminder and the alert, both dropped
    assert world.missed() == [] and world.webhooks.sent == []


def test_deadlines_follow_the_record() -> None:
    now = 1_000
    armed = Session(
        reminder_time_minutes=1,
        alert_time_minutes=2,
        reminder_time_end=now + MIN,
        alert_time_end=now + 2 * MIN,
        settings_configured=True,
    )
    assert rules.deadlines(armed, now) == {"alert": now + 2 * MIN, "reminder": now + MIN}
    assert rules.deadlines(armed, now + MIN) == {"alert": now + 2 * MIN}  # reminder passed
    assert rules.deadlines(Session(), now) == {}
    fired, ok = rules.fire_alert(armed, now + 2 * MIN)
    assert ok and rules.deadlines(fired, now) == {}
    assert rules.fire_alert(fired, now + 2 * MIN) == (fired, False)
    assert rules.fire_alert(armed, now + 3 * MIN) == (armed, False)  # stale deadline


async def test_after_downtime_a_late_reminder_is_dropped_but_the_alert_fires(
    world: World,
) -> None:
    await world.pair()
    await world.set_timers(1, 2)
    await world.at(5 * MIN)  # both overdue when the scheduler first runs
    assert world.sio.to("t", "checkInReminder") == []
    assert len(world.missed()) == 1


async def test_log_records_never_carry_a_whole_token(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # caplog sees the records before the formatter's redaction: this checks the code itself.
    caplog.set_level("DEBUG")
    token = await world.pair()
    await world.set_timers(1, 2)
    await world.send("t", "checkIn", token)
    await world.at(3 * MIN)
    await world.send("t", "checkIn", token)
    await world.send("b", "reconnectSession", {"sessionToken": token, "role": "tracker"})
    await world.send("b", "setTimers", {"sessionToken": token, "reminderTimeMinutes": "x"})
    await world.events.disconnect("t", "transport close")
    assert "Missed check-in for session" in caplog.text and "All clear" in caplog.text
    assert token not in caplog.text


async def test_a_refused_rejoin_hears_nothing_of_the_session(world: World) -> None:
    """A join refused (too many trackers, an unknown session) leaves the trackers' room it
    entered before its join was written (what joins at the moment of an alert or a check-in
    hears: tests/test_interleavings.py)."""
    world.events.trackers_per_session = 1
    token = await world.pair()
    await world.set_timers(1, 2)
    await world.send("b", "reconnectSession", {"sessionToken": token, "role": "tracker"})
    await world.send("c", "reconnectSession", {"sessionToken": "f" * 64, "role": "tracker"})
    await world.send("t", "checkIn", token)
    await world.at(5 * MIN)
    assert len(world.missed("a")) == 1
    for stranger in ("b", "c"):
        assert [event for to, event, _ in world.sio.sent if to == stranger] == ["error"]
