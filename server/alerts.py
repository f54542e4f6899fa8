"""Missed check-ins, told by the server itself: the scheduler that fires alerts and reminders.

Every instance polls the deadlines a few times a second; a claim hands each due deadline to one
instance (see deadlines.py). Firing an alert makes it pending in the session record (so trackers
who connect later hear of it), then tells every connected tracker and the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from redis.exceptions import RedisError

from . import rules
from .deadlines import Claimed
from .events import Events
from .logs import token_ref
from .presence import trackers_room
from .store import StoreUnavailable
from .webhooks import Webhooks

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.1
BATCH: Final = 200
# A deadline claimed while the record could not be checked against Redis is claimed again this
# soon (not when its lease runs out).
RETRY_MS: Final = 1_000


class Alerts:
    def __init__(self, events: Events, webhooks: Webhooks | None = None) -> None:
        self.events = events
        self.store = events.store
        self.clock = events.clock
        self.webhooks = webhooks
        events.on_all_clear = self.all_clear

    async def run_once(self) -> int:
        """Fire everything due now; returns how many deadlines were handled."""
        handled = 0
        while self.store.available:
            # Not while Redis is away or its lost data is being written back: a record this
            # instance holds may be stale then, and another instance's newer copy decides.
            try:
                claimed = await self.store.deadlines.claim(self.clock(), BATCH)
            except (RedisError, OSError) as exc:
                log.debug("Deadlines not claimed this round (Redis away): %s", exc)
                return handled
            if not claimed:
                return handled
            await asyncio.gather(*(self._handle(item) for item in claimed))
            handled += len(claimed)
            if len(claimed) < BATCH:
                return handled
        return handled

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("Alert scheduler round failed")
            await asyncio.sleep(POLL_SECONDS)

    async def _handle(self, claimed: Claimed) -> None:
        kind, token, due = claimed
        try:
            if kind == rules.ALERT:
                await self._alert(token, due)
            elif kind == rules.REMINDER:
                await self._remind(token, due)
        except StoreUnavailable:
            # Decided on no copy: claimed again shortly (the lease covers Redis being away).
            with contextlib.suppress(RedisError, OSError):
                await self.store.deadlines.retry(claimed, RETRY_MS)
            return
        except Exception:
            log.exception("Firing %s for session %s failed", kind, token_ref(token))
            return
        with contextlib.suppress(RedisError, OSError):
            await self.store.deadlines.release(claimed)

    async def _alert(self, token: str, due: int) -> None:
        updated = await self.store.update(token, lambda s: rules.fire_alert(s, due), checked=True)
        if updated is None or not updated[1]:
            return  # the session is gone, or a check-in or new timers came first
        session = updated[0]
        lag = self.clock() - due
        log.info("Missed check-in for session %s (due %d ms ago)", token_ref(token), lag)
        self.events.metrics.alert_fired()
        await self.events.sio.emit(
            "checkInMissed", {"sessionToken": token, "timestamp": due}, to=trackers_room(token)
        )
        self.events.metrics.alert_delivered(len(session.tracker_socket_ids))
        if self.webhooks is not None:
            self.webhooks.send("checkInMissed", token, due)

    async def _remind(self, token: str, due: int) -> None:
        # A check-in on another instance counts.
        session = await self.store.current(token, checked=True)
        if session is None or not rules.reminder_due(session, due, self.clock()):
            return
        if session.tracked_socket_id is not None:
            payload = {
                "sessionToken": token,
                "reminderTimeEnd": session.reminder_time_end,
                "alertTimeEnd": session.alert_time_end,
            }
            await self.events.sio.emit("checkInReminder", payload, to=session.tracked_socket_id)

    def all_clear(self, token: str, timestamp: int) -> None:
        """A check-in cleared a pending alert (trackers already got checkInReceived)."""
        log.info("All clear for session %s", token_ref(token))
        if self.webhooks is not None:
            self.webhooks.send("allClear", token, timestamp)
