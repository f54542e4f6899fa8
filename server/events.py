"""Socket.IO handlers: decode the payload, apply a rule, persist, emit. Nothing else."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from typing import Any

import socketio
from msgspec.structs import replace
from redis.exceptions import RedisError

from . import errors, payloads, rules
from .clock import Clock
from .codes import Codes
from .crashes import Bindings
from .guard import SETTLE_SECONDS, Guard
from .instances import Instances
from .limits import (
    AttemptLimiter,
    RateLimiter,
    client_address,
)
from .logs import token_ref
from .metrics import Metrics
from .models import Session
from .pairevents import PairingEvents
from .pairscripts import PairingScripts
from .presence import Joins, Presence, Role, trackers_room
from .store import MemoryStore, StoreUnavailable, change_with
from .tasks import running_loop
from .transport import query_transports

log = logging.getLogger(__name__)

Handler = Callable[[str, tuple[Any, ...]], Awaitable[None]]

# Node's "client namespace disconnect" is the only reason that must not warn the tracked person.
CLIENT_LEFT = "client disconnect"

# Set when a handler answered its sender with `error` (each event runs in a task of its own).
_answered_error: ContextVar[bool] = ContextVar("answered_error", default=False)


class Events(PairingEvents):
    """The protocol of PROTOCOL.md, one method per client event."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        store: MemoryStore,
        clock: Clock,
        *,
        code_grace_ms: int,
        limiter: AttemptLimiter | None = None,
        trust_proxy: bool = False,
        metrics: Metrics | None = None,
        instances: Instances | None = None,
        codes: Codes | None = None,
        bindings: Bindings | None = None,
        guard: Guard | None = None,
        registrations: RateLimiter | None = None,
        pending_codes_per_socket: int = 2,
        trackers_per_session: int = 20,
        scripts: PairingScripts | None = None,
    ) -> None:
        self.sio = sio
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.clock = clock
        self.instances = instances if instances is not None else Instances(clock)
        self.codes = codes if codes is not None else Codes(clock, self.instances, code_grace_ms)
        self.presence = Presence()
        self.joins = Joins(getattr(sio, "manager", None))
        # Every socket's sessions, in Redis too: if its instance dies, a survivor tells them.
        self.bindings = bindings if bindings is not None else Bindings()
        self.code_grace_ms = code_grace_ms
        self.limiter = limiter if limiter is not None else AttemptLimiter(clock, limit=10)
        # Every registerCode of an address, of any code: a sweep of the code space gets nowhere.
        self.registrations = (
            registrations if registrations is not None else RateLimiter(clock, limit=30)
        )
        self.pending_codes_per_socket = pending_codes_per_socket
        # Pairing events in one Redis call each (with Redis; else, and as a fallback, step by
        # step).
        self.scripts = scripts
        self.trackers_per_session = trackers_per_session
        self.trust_proxy = trust_proxy
        self.addresses: dict[str, str] = {}
        # Told when a check-in clears a pending alert (the alerts' webhook says "all clear").
        self.on_all_clear: Callable[[str, int], None] | None = None
        # The client events being handled now (each runs in a task of its own), so that a
        # shutdown can let them finish before it hangs up.
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Set when the shutdown hangs up on everyone: nobody is told that the others left (they
        # are all leaving, and reconnect by themselves).
        self.draining = False
        # Each socket's events in flight, which its disconnect waits for (see disconnect).
        self.guard = guard if guard is not None else getattr(sio, "guard", None)
        self._late_leaves: set[asyncio.Task[None]] = set()
        # Sockets that left while Redis was away (their reasons): sessions paired through
        # another instance are known here only from Redis (codes and bindings), so they are
        # told once it answers again.
        self._unseen_leaves: dict[str, str] = {}
        self._telling: asyncio.Task[None] | None = None
        self._seen_once: set[str] = set()  # of those, the ones a heartbeat went through after
        if self.bindings.shared:
            self.instances.listeners.append(self)

    def attach(self) -> None:
        handlers: dict[str, Handler] = {
            "registerCode": self.register_code,
            "trackCode": self.track_code,
            "reconnectSession": self.reconnect_session,
            "checkIn": self.check_in,
            "setTimers": self.set_timers,
            "getStatus": self.get_status,
        }
        for event, handler in handlers.items():
            self.sio.on(event, self._guarded(event, handler))
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)

    def _guarded(self, event: str, handler: Handler) -> Callable[..., Awaitable[None]]:
        """Every failure becomes an `error` event for the sender; nothing reaches the loop."""

        @functools.wraps(handler)
        async def run(sid: str, *args: Any) -> None:
            started = time.perf_counter()
            _answered_error.set(False)
            outcome = "error"
            task = asyncio.current_task(running_loop())
            if task is not None:
                self.in_flight.add(task)
            try:
                await handler(sid, args)
                outcome = "rejected" if _answered_error.get() else "ok"
            except payloads.BadPayload as exc:
                outcome = "rejected"
                log.info("Rejected %s from %s: %s", event, sid, exc, extra=self._client(sid))
                await self._error(sid, str(exc))
            except StoreUnavailable:
                log.warning(
                    "%s from %s: session not in memory and Redis unavailable",
                    event,
                    sid,
                    extra=self._client(sid),
                )
                await self._error(sid, errors.STORAGE_UNAVAILABLE)
            except Exception:
                self.metrics.error("event")
                log.exception("%s from %s failed", event, sid)
                await self._error(sid, errors.INTERNAL)
            finally:
                if task is not None:
                    self.in_flight.discard(task)
                self.metrics.event(event, outcome, time.perf_counter() - started)

        return run

    async def finish_in_flight(self, within: float) -> int:
        """Wait (at most `within` s) for the events being handled now; returns how many did
        not finish. Events that arrive meanwhile are handled but not waited for."""
        waiting = set(self.in_flight)
        if not waiting:
            return 0
        _, pending = await asyncio.wait(waiting, timeout=within)
        return len(pending)

    async def _error(self, sid: str, message: str) -> None:
        _answered_error.set(True)
        await self.sio.emit("error", message, to=sid)

    async def _emit_to_trackers(self, token: str, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data, to=trackers_room(token))  # None: no payload

    # --- answers ---------------------------------------------------------------------------------

    def _address(self, sid: str) -> str:
        return self.addresses.get(sid, "unknown")

    def _client(self, sid: str) -> dict[str, str]:
        """`extra=` for a log line about this client (at most a few a minute are written)."""
        return {"client": self._address(sid)}

    async def _refuse(self, sid: str, quota: str | None, message: str, event: str) -> None:
        """A refusal by a limit or a role: counted (a quota's by its name), logged, answered."""
        address = self._address(sid)
        if quota is not None:
            self.metrics.refused(quota)
        log.warning(
            "%s from %s refused: %s", event, sid, quota or message, extra={"client": address}
        )
        await self._error(sid, message)

    # --- sessions ----------------------------------------------------------------------------

    async def reconnect_session(self, sid: str, args: tuple[Any, ...]) -> None:
        request = payloads.reconnect(args)
        token = request.session_token
        if request.role == Role.TRACKED.value:
            if self.presence.holds(sid, token, Role.TRACKER):
                await self._refuse(sid, None, errors.NOT_THE_TRACKED_PERSON, "reconnectSession")
                return
            updated = await self.store.update(token, change_with(rules.with_tracked, sid))
            if updated is None:
                await self._error(sid, errors.INVALID_SESSION)
                return
            self.presence.bind(sid, token, Role.TRACKED)
            await self.bindings.bound(sid, token, Role.TRACKED)
            seen = await self.codes.for_token(token)
            if seen is not None and seen.entry is not None:
                # The app's code is its own again (a lost race only means it re-registers),
                # from where it is now: the token proved it is the app.
                mine = replace(
                    seen.entry, tracked_sid=sid, left_at=None, address=self._address(sid)
                )
                await self.codes.put(mine, seen)
            await self.sio.emit(
                "sessionReconnected", {"sessionToken": token, "role": "tracked"}, to=sid
            )
            return
        if request.role != Role.TRACKER.value:
            if await self.store.load(token) is None:
                await self._error(sid, errors.INVALID_SESSION)
            else:
                await self._error(sid, errors.INVALID_ROLE)
            return
        if self.presence.holds(sid, token, Role.TRACKED):
            await self._refuse(sid, None, errors.NOT_A_TRACKER, "reconnectSession")
            return
        with self.joins.watching(token) as told:
            await self._rejoin(sid, token, told)

    async def _rejoin(self, sid: str, token: str, told: Callable[[], int]) -> None:
        """reconnectSession as a tracker; `told`: the newest check-in told to the trackers'
        room during the join (presence.Joins)."""
        updated_tracker = await self._join_trackers(
            sid, token, _rejoin_tracker(sid, self.trackers_per_session), lambda r: r[0]
        )
        if updated_tracker is None:
            await self._error(sid, errors.INVALID_SESSION)
            return
        session, (joined, pending) = updated_tracker
        if not joined:
            await self._refuse(
                sid, "trackers_per_session", errors.TOO_MANY_TRACKERS, "reconnectSession"
            )
            return
        self.presence.bind(sid, token, Role.TRACKER)
        await self.bindings.bound(sid, token, Role.TRACKER)
        await self.sio.emit(
            "sessionReconnected", {"sessionToken": token, "role": "tracker"}, to=sid
        )
        if told() > (session.last_check_in or 0):
            return  # the socket heard a newer check-in: the pending alert is cleared
        if pending is not None:
            await self.sio.emit(
                "checkInMissed", {"sessionToken": token, "timestamp": pending}, to=sid
            )
        if session.last_check_in is not None:
            await self.sio.emit(
                "checkInReceived",
                {"sessionToken": token, "timestamp": session.last_check_in},
                to=sid,
            )

    async def check_in(self, sid: str, args: tuple[Any, ...]) -> None:
        token = payloads.token(args)
        if self.presence.holds(sid, token, Role.TRACKER):
            await self._refuse(sid, None, errors.NOT_THE_TRACKED_PERSON, "checkIn")
            return
        now = self.clock()
        updated = await self.store.update(token, lambda s: rules.check_in_clearing(s, now))
        if updated is None:
            await self._error(sid, errors.INVALID_SESSION)
            return
        session, cleared = updated
        if cleared is not None and self.on_all_clear is not None:
            self.on_all_clear(token, now)
        if rules.timers_armed(session):
            await self.sio.emit("timersSet", rules.timers_payload(session), to=sid)
        await self.sio.emit("checkInConfirmed", {"timestamp": now}, to=sid)
        await self._emit_to_trackers(
            token, "checkInReceived", {"sessionToken": token, "timestamp": now}
        )

    async def set_timers(self, sid: str, args: tuple[Any, ...]) -> None:
        request = payloads.set_timers(args)
        if self.presence.holds(sid, request.session_token, Role.TRACKER):
            await self._refuse(sid, None, errors.NOT_THE_TRACKED_PERSON, "setTimers")
            return
        change = change_with(
            rules.set_timers,
            request.reminder_time_minutes,
            request.alert_time_minutes,
            self.clock(),
        )
        updated = await self.store.update(request.session_token, change)
        if updated is None:
            await self._error(sid, errors.INVALID_SESSION)
            return
        await self.sio.emit("timersSet", rules.timers_payload(updated[0]), to=sid)

    async def get_status(self, sid: str, args: tuple[Any, ...]) -> None:
        token = payloads.get_status(args).session_token
        status = await self.status(token)
        if status is None:
            await self._error(sid, errors.INVALID_SESSION)
            return
        session, expired = status
        await self.sio.emit(
            "statusUpdate",
            {"sessionToken": token, "lastCheckIn": session.last_check_in, "alertExpired": expired},
            to=sid,
        )

    async def status(self, token: str) -> tuple[Session, bool] | None:
        """getStatus and the REST route: alertExpired, with its pending-alert side effect."""
        return await self.store.update(
            token, functools.partial(rules.observe_status, now=self.clock())
        )

    # --- leaving -----------------------------------------------------------------------------

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # python-socketio keeps this environ (every header, and the HTTP request it came
        # with) for the connection's lifetime, to hand to a later CONNECT on the same
        # Engine.IO session. Keep only what is read here.
        seen: tuple[str, str] | None = environ.get("alliswell.client")
        if seen is None:
            request = environ["aiohttp.request"]
            address = client_address(request.remote, request.headers, self.trust_proxy)
            started_on = (query_transports(environ.get("QUERY_STRING", "")) or ("polling",))[0]
            seen = (address, "websocket" if started_on == "websocket" else "polling")
            environ.clear()
            environ["alliswell.client"] = seen
        if self.guard is not None and not self.guard.open_session(sid, seen[0]):
            # With TRUST_PROXY every TCP connection is the proxy's: counted here instead.
            log.info("Connection from %s refused: too many", seen[0], extra={"client": seen[0]})
            raise socketio.exceptions.ConnectionRefusedError(errors.TOO_MANY_CONNECTIONS)
        self.addresses[sid] = seen[0]
        self.metrics.connected(seen[1])

    async def disconnect(self, sid: str, reason: str = CLIENT_LEFT) -> None:
        """The socket's events still in flight finish first (at most a few seconds): one that
        awaited Redis meanwhile would otherwise bind the departed socket after its bookkeeping
        (a ghost socket id in the record, its code held for 24 h)."""
        self.metrics.disconnected(reason)
        guard = self.guard
        # Not while draining: the events in flight had their share of the budget already,
        # and every socket is leaving.
        settled = guard is None or await guard.settle(sid, 0 if self.draining else SETTLE_SECONDS)
        try:
            await self._leave(sid, reason)
        except Exception:
            self.metrics.error("disconnect")
            log.exception("Disconnect bookkeeping for %s failed", sid)
        if guard is None:
            return
        if settled or self.draining:
            guard.forget(sid)
            return
        # An event outlived the wait: leave again once it is over.
        task = asyncio.get_running_loop().create_task(self._leave_late(guard, sid, reason))
        self._late_leaves.add(task)
        task.add_done_callback(self._late_leaves.discard)

    async def _leave_late(self, guard: Guard, sid: str, reason: str) -> None:
        try:
            await guard.settled(sid)
            await self._leave(sid, reason)
        except Exception:
            self.metrics.error("disconnect")
            log.exception("Disconnect bookkeeping for %s failed", sid)
        finally:
            guard.forget(sid)

    async def _leave(self, sid: str, reason: str) -> None:
        now = self.clock()
        self.addresses.pop(sid, None)
        released = await self.codes.release(sid, now)
        bindings = self.presence.pop(sid)
        # The tracked socket of a session that a tracker on another instance paired with.
        bindings.update((e.session_token, Role.TRACKED) for e in released if e.session_token)
        if sid in self.codes.unreachable or not self.store.answering:
            self.codes.unreachable.discard(sid)
            self._unseen_leaves[sid] = reason
        await self._unbind(sid, bindings, reason)

    def beat_ok(self, marker: str) -> None:
        # A leave is told at the second heartbeat that went through after it: the other
        # instances' relay listeners have subscribed again by then (what is told goes through
        # Redis's pub/sub), and this instance writes again.
        if not self.store.available:
            return
        due, self._seen_once = self._seen_once, set(self._unseen_leaves)
        if due and (self._telling is None or self._telling.done()):
            self._telling = asyncio.create_task(self._tell_unseen(due), name="unseen-leaves")

    def beat_failed(self, exc: BaseException) -> None:
        self._seen_once = set()  # told once Redis answers again

    async def _tell_unseen(self, due: set[str]) -> None:
        """Sessions that sockets which left while Redis was away were bound to, as Redis
        knows them (a pairing through another instance is recorded only there): told now."""
        left = {sid: self._unseen_leaves[sid] for sid in due if sid in self._unseen_leaves}
        try:
            members = await self.bindings.of(self.instances.id)
        except (RedisError, OSError):
            return  # at the next heartbeat
        found: dict[str, set[tuple[str, Role]]] = {sid: set() for sid in left}
        for role, token, sid in members:
            if sid in found:
                found[sid].add((token, role))
        for sid, bindings in found.items():
            try:
                await self._unbind(sid, bindings, left[sid])
            except StoreUnavailable:
                return  # at the next heartbeat
            self._unseen_leaves.pop(sid, None)

    async def _unbind(self, sid: str, bindings: set[tuple[str, Role]], reason: str) -> None:
        """The socket left these sessions: their records, and who is told."""
        for token, role in bindings:
            if role is Role.TRACKED:
                updated = await self.store.update(token, _was(rules.without_tracked, sid))
                if updated is not None and updated[1] and not self.draining:
                    log.info("Tracked person left session %s (%s)", token_ref(token), reason)
                    await self._emit_to_trackers(token, "trackedPersonDisconnected")
                continue
            updated = await self.store.update(token, _was(rules.without_tracker, sid))
            if updated is None or not updated[1]:
                continue
            session = updated[0]
            if (
                not session.tracker_socket_ids
                and session.tracked_socket_id is not None
                and reason != CLIENT_LEFT
                and not self.draining
            ):
                await self.sio.emit("trackerDisconnected", to=session.tracked_socket_id)
        await self.bindings.left(sid, bindings)

    async def instance_died(self, token: str, roles: Collection[Role]) -> None:
        """Sockets of a dead instance were bound in this session in these roles: they left by
        a transport close. The store drops them (ids of a dead instance do not count); who is
        told is decided on the record as it is now, which a write elsewhere may have pruned
        already, or in which the app or a tracker may be back on another instance."""
        session = await self.store.current(token)
        if session is None:
            return
        if Role.TRACKED in roles and session.tracked_socket_id is None:
            log.info("Tracked person left session %s (instance died)", token_ref(token))
            await self._emit_to_trackers(token, "trackedPersonDisconnected")
        if (
            Role.TRACKER in roles
            and not session.tracker_socket_ids
            and session.tracked_socket_id is not None
        ):
            await self.sio.emit("trackerDisconnected", to=session.tracked_socket_id)


def _was(
    rule: Callable[[Session, str], Session], sid: str
) -> Callable[[Session], tuple[Session, bool]]:
    """A removal, reporting whether the socket was there to remove."""

    def change(session: Session) -> tuple[Session, bool]:
        changed = rule(session, sid)
        return changed, changed is not session

    return change


def _rejoin_tracker(
    sid: str, limit: int
) -> Callable[[Session], tuple[Session, tuple[bool, int | float | None]]]:
    """reconnectSession as tracker: join (unless the session is full), and take the pending
    alert (Node cleared it too)."""

    def change(session: Session) -> tuple[Session, tuple[bool, int | float | None]]:
        joined, admitted = rules.join_as_tracker(session, sid, limit)
        if not admitted:
            return session, (False, None)
        return rules.clear_pending(joined), (True, session.pending_alert)

    return change
