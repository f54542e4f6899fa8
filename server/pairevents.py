"""Pairing: registerCode and trackCode (PROTOCOL.md), mixed into events.Events.

What decides is in pairing.py (the rules of a claim on a code) and codes.py (the codes as every
instance sees them); the one-call Redis scripts are in pairscripts.py. Here the two events are
taken from the payload to the answer: the limits of the address first, then the code's change
in one Redis call where it can be made so, else step by step, tried again while other events
(on any instance) keep changing the code meanwhile.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from msgspec.structs import replace
from redis.exceptions import RedisError

from . import errors, keys, pairscripts, payloads, rules
from .codes import Seen, TooManyPending
from .limits import BUSY, KEY_SECONDS, TAKEN, USED_UP, Ticket
from .logs import token_ref
from .models import PendingCode, Session
from .pairing import CODE_TTL_MS, Claim, Track, contested, register, track
from .presence import Role, trackers_room
from .store import Change, T, change_with

if TYPE_CHECKING:
    import socketio

    from .clock import Clock
    from .codes import Codes
    from .crashes import Bindings
    from .instances import Instances
    from .limits import AttemptLimiter, RateLimiter
    from .metrics import Metrics
    from .pairscripts import PairingScripts
    from .presence import Joins, Presence
    from .store import MemoryStore

# The log lines of pairing keep the logger they had in events.py (operators filter on it).
log = logging.getLogger("server.events")

# Tries at a pairing event whose code other events (on any instance) keep changing meanwhile.
CODE_RACE_ATTEMPTS = 5


class PairingEvents:
    """registerCode and trackCode; the state and the answers are events.Events'."""

    if TYPE_CHECKING:
        sio: socketio.AsyncServer
        store: MemoryStore
        clock: Clock
        instances: Instances
        codes: Codes
        presence: Presence
        joins: Joins
        bindings: Bindings
        code_grace_ms: int
        limiter: AttemptLimiter
        registrations: RateLimiter
        pending_codes_per_socket: int
        scripts: PairingScripts | None
        trackers_per_session: int
        metrics: Metrics

        def _address(self, sid: str) -> str: ...

        async def _error(self, sid: str, message: str) -> None: ...

        async def _refuse(self, sid: str, quota: str | None, message: str, event: str) -> None: ...

    async def register_code(self, sid: str, args: tuple[Any, ...]) -> None:
        code = payloads.code(args)
        address = self._address(sid)
        attempt = self.limiter.ticket(address)
        try:
            first = await self._register_at_once(sid, code, attempt)
            if first is True:
                return
            if first is None and not await self.registrations.allow(address):
                await self._refuse(
                    sid, "code_registrations_per_minute", errors.TOO_MANY_ATTEMPTS, "registerCode"
                )
                return
            await self._settle(
                "registerCode", functools.partial(self._register, attempt=attempt), sid, code, first
            )
        except TooManyPending:
            attempt.honest()  # not a guess: this address registers too much
            await self._refuse(
                sid, "pending_codes_per_address", errors.TOO_MANY_CODES, "registerCode"
            )
        finally:
            await attempt.settle()

    async def _register_at_once(
        self, sid: str, code: str, attempt: Ticket
    ) -> Seen | Literal[True] | None:
        """registerCode of a code that is free, in one Redis call: the registration counted,
        then the code registered if Redis has none. True when answered (registered, or refused
        by the limit); the code's entry when Redis has one (counted: decided step by step on
        it); None when nothing was done (Redis away, or a socket proving it is the app back)."""
        if (
            self.scripts is None
            or not self.codes.shared(code)
            or self._own_session_of(sid, code) is not None
        ):
            return None
        counting = self.registrations.count_args(attempt.address)
        if counting is None:
            return None
        key, most, window = counting
        _, entry = register(None, code, sid, attempt.address, self.clock(), self.code_grace_ms)
        blank = Seen(code, None)
        try:
            state, count, current = await self.scripts.register(
                key, most, KEY_SECONDS, *self.codes.swap_call(blank, entry)
            )
        except (RedisError, OSError) as exc:
            log.warning("registerCode in one Redis call failed (%s): step by step", exc)
            return None
        self.registrations.counted(attempt.address, window, count)
        if state == pairscripts.OVER_LIMIT:
            await self._refuse(
                sid, "code_registrations_per_minute", errors.TOO_MANY_ATTEMPTS, "registerCode"
            )
            return True
        if state == pairscripts.CHANGED:
            return self.codes.seen(code, current or None)
        stored = self.codes.swapped(blank, entry, state)  # TooManyPending: too many pending
        assert stored is not None
        await self._registered(sid, entry, {"code": code, "expiresAt": entry.expires_at}, attempt)
        return True

    def _own_session_of(self, sid: str, code: str) -> str | None:
        """The session this socket proved to be the tracked app of (reconnectSession) that was
        paired with `code`: registering it again resumes that session even where the code's
        own entry is gone (lost with Redis's data, or retired)."""
        for token in self.presence.sessions(sid, Role.TRACKED):
            session = self.store.cached(token)
            if session is not None and session.code == code:
                return token
        return None

    async def _settle(
        self,
        event: str,
        attempt: Callable[[str, str, Seen | None], Awaitable[bool]],
        sid: str,
        code: str,
        first: Seen | None = None,
    ) -> None:
        """Try a pairing event until no other event (on any instance) changed its code under it;
        `first`: the code as a script just read it (later tries read it again)."""
        for _ in range(CODE_RACE_ATTEMPTS):
            if await attempt(sid, code, first):
                return
            first = None
        log.warning("%s from %s: the code kept changing under it", event, sid)
        await self._error(sid, errors.STORAGE_UNAVAILABLE)

    async def _register(
        self, sid: str, code: str, seen: Seen | None = None, *, attempt: Ticket
    ) -> bool:
        """One try at registerCode; False if another event changed the code meanwhile."""
        now = self.clock()
        if seen is None:
            seen = await self.codes.get(code)
        # The proven tracked app (reconnectSession) of the session this code paired: its code,
        # whatever its entry says now (lost with Redis's data, retired, or naming a socket
        # that left while Redis was away).
        own = self._own_session_of(sid, code)
        proven = own is not None and (seen.entry is None or seen.entry.session_token in (None, own))
        # Someone else's code, unless this socket proves to be its owner back: counted before
        # anything is decided, so that concurrent tries cannot go past the limit.
        contest = not proven and contested(seen.entry, sid, now, self.code_grace_ms)
        if contest and not await attempt.spend():
            await self._refuse(sid, None, errors.TOO_MANY_ATTEMPTS, "registerCode")
            return True
        claim, entry = register(seen.entry, code, sid, attempt.address, now, self.code_grace_ms)
        if proven and claim is not Claim.RESUMED:
            claim = Claim.RESUMED
            entry = PendingCode(
                code=code,
                tracked_sid=sid,
                expires_at=now + CODE_TTL_MS,
                session_token=own,
                address=attempt.address,
            )
        if claim is Claim.IN_USE:
            log.info(
                "registerCode from %s refused: code held by another socket",
                sid,
                extra={"client": attempt.address},
            )
            await self._error(sid, errors.CODE_IN_USE)
            return True
        token = entry.session_token
        if token is not None and self.presence.holds(sid, token, Role.TRACKER):
            attempt.honest()
            await self._refuse(sid, None, errors.NOT_THE_TRACKED_PERSON, "registerCode")
            return True
        stored = await self.codes.put(entry, seen)
        if stored is None:
            return False
        reply: dict[str, Any] = {"code": code, "expiresAt": entry.expires_at}
        if claim is Claim.RESUMED:
            assert token is not None
            updated = await self.store.update(token, change_with(rules.with_tracked, sid))
            if updated is None:
                # The session expired under the code: the code starts over, unpaired.
                entry = PendingCode(
                    code=code, tracked_sid=sid, expires_at=entry.expires_at, address=entry.address
                )
                if await self.codes.put(entry, stored) is None:
                    return False
            else:
                self.presence.bind(sid, token, Role.TRACKED)
                await self.bindings.bound(sid, token, Role.TRACKED)
                reply["sessionToken"] = token
        await self._registered(sid, entry, reply, attempt)
        return True

    async def _registered(
        self, sid: str, entry: PendingCode, reply: dict[str, Any], attempt: Ticket
    ) -> None:
        """The code is the socket's: answered."""
        attempt.honest()
        if not entry.paired:
            # The app shows only its newest code: an older pending one of this socket goes.
            retired = await self.codes.retire_pending(sid, self.pending_codes_per_socket)
            for _ in range(retired):
                self.metrics.refused("pending_codes_per_socket")
        await self.sio.emit("codeRegistered", reply, to=sid)

    async def track_code(self, sid: str, args: tuple[Any, ...]) -> None:
        code = payloads.any_code(args)
        attempt = self.limiter.ticket(self._address(sid))
        try:
            first = await self._track_at_once(sid, code, attempt)
            if first is True:
                return
            # A place taken before the code is looked at; a failure unless it pairs.
            if not await attempt.spend():
                await self._refuse(sid, None, errors.TOO_MANY_ATTEMPTS, "trackCode")
                return
            await self._settle(
                "trackCode", functools.partial(self._track, attempt=attempt), sid, code, first
            )
        finally:
            await attempt.settle()

    async def _track_at_once(
        self, sid: str, code: str, attempt: Ticket
    ) -> Seen | Literal[True] | None:
        """trackCode in one Redis call. A code that a socket here registered is expected as
        this instance wrote it: the first tracker pairs in one call (the attempt's place taken
        first, as always). Any other code is read in the call that takes the place. True when
        answered; the code's entry when read (the place taken: decided step by step on it);
        None when no place was taken (Redis away, or every place busy or used up)."""
        if self.scripts is None or not self.codes.shared(code):
            return None
        place = attempt.place()
        if place is None:
            return None
        cached = self.codes.cached(code)
        if cached is not None and cached.entry is not None:
            entry = cached.entry
            if self._pairs_first(entry, sid):
                paired = await self._pair_at_once(entry, cached, sid, attempt, place)
                if isinstance(paired, tuple):
                    await self._tracking_started(sid, *paired, bound=True)
                    return True
                return paired
        attempts_key, take_args = place
        try:
            state, failed, current = await self.scripts.look(
                attempts_key, take_args, keys.code(code)
            )
        except (RedisError, OSError) as exc:
            log.warning("trackCode in one Redis call failed (%s): step by step", exc)
            return None
        attempt.took(state, failed)
        return self.codes.seen(code, current or None) if state == TAKEN else None

    def _pairs_first(self, entry: PendingCode, sid: str) -> bool:
        """Whether `_track` would pair this socket as the code's first tracker."""
        verdict = track(entry, self.clock(), self.code_grace_ms)
        return verdict is Track.PAIR and entry.session_token is None and entry.tracked_sid != sid

    async def _track(
        self, sid: str, code: str, seen: Seen | None = None, *, attempt: Ticket
    ) -> bool:
        """One try at trackCode; False if another event changed the code meanwhile."""
        if seen is None:
            seen = await self.codes.get(code)
        entry = seen.entry
        verdict = track(entry, self.clock(), self.code_grace_ms)
        if verdict is Track.EXPIRED:
            await self.codes.delete(seen)
            await self._error(sid, errors.CODE_EXPIRED)
            return True
        if entry is None or verdict is Track.UNKNOWN:
            await self._error(sid, errors.INVALID_OR_EXPIRED_CODE)
            return True
        token = entry.session_token
        if entry.tracked_sid == sid or (
            token is not None and self.presence.holds(sid, token, Role.TRACKED)
        ):
            attempt.honest()
            await self._refuse(sid, None, errors.NOT_A_TRACKER, "trackCode")
            return True
        if token is None:
            place = attempt.place() if self.scripts is not None and not seen.local else None
            if place is not None:  # the place is taken, in Redis: given back in the same call
                paired = await self._pair_at_once(entry, seen, sid, attempt, place)
                if isinstance(paired, tuple):
                    await self._tracking_started(sid, *paired, bound=True)
                    return True
                if isinstance(paired, Seen):
                    return False  # another tracker paired it first: join that session
            joined = await self._pair(entry, seen, sid)
            if joined is None:
                return False  # another tracker paired it first: join that session
            attempt.honest()
            await self._tracking_started(sid, *joined, app=entry.tracked_sid)
            return True
        limit = self.trackers_per_session
        with self.joins.watching(token) as told:
            updated = await self._join_trackers(
                sid, token, lambda session: rules.join_as_tracker(session, sid, limit), bool
            )
            if updated is None:
                await self.codes.delete(seen)
                await self._error(sid, errors.INVALID_OR_EXPIRED_CODE)
                return True
            if not updated[1]:
                attempt.honest()
                await self._refuse(
                    sid, "trackers_per_session", errors.TOO_MANY_TRACKERS, "trackCode"
                )
                return True
            attempt.honest()
            await self._tracking_started(sid, token, updated[0], told=told)
        return True

    def _new_session(self, entry: PendingCode, sid: str) -> tuple[str, Session]:
        """The first tracker's session: a new token, the code's app and this tracker."""
        session = Session(
            tracked_socket_id=entry.tracked_sid,
            tracker_socket_ids=(sid,),
            code=entry.code,
            code_address=entry.address,
        )
        return rules.new_token(), session

    def _paired_here(self, entry: PendingCode, token: str) -> None:
        tracked = entry.tracked_sid
        if tracked is not None and self.instances.is_local(tracked):
            self.presence.bind(tracked, token, Role.TRACKED)
        log.info("Session created: %s", token_ref(token))

    async def _pair_at_once(
        self,
        entry: PendingCode,
        seen: Seen,
        sid: str,
        attempt: Ticket,
        place: tuple[str, list[int]],
    ) -> tuple[str, Session] | Seen | None:
        """The first tracker, in one Redis call: the attempt's place (taken first unless it is
        already), the code still as `seen`, then the new record, the code linked to it, both
        bindings, and the place given back. Returns the pairing; or the code as it is now
        (another event changed it: nothing done but the place); or None (nothing done but
        what the ticket was told: the call failed, or no place was free)."""
        assert self.scripts is not None
        token, session = self._new_session(entry, sid)
        record = self.store.create_call(token, session)
        if record is None:
            return None
        record_key, raw, written = record
        paired = replace(entry, session_token=token)
        bound = [(sid, token, Role.TRACKER)]
        if entry.tracked_sid is not None:
            bound.insert(0, (entry.tracked_sid, token, Role.TRACKED))
        try:
            state, failed, current = await self.scripts.pair(
                place,
                self.codes.swap_call(seen, paired),
                (record_key, raw, keys.SESSION_TTL_SECONDS),
                self.bindings.members(bound),
            )
        except (RedisError, OSError) as exc:
            log.warning("Pairing in one Redis call failed (%s): step by step", exc)
            return None
        if place[1]:  # the place was taken in this call (unless busy or used up)
            attempt.took(state if state in (BUSY, USED_UP) else TAKEN, failed)
        if state == pairscripts.CHANGED:
            return self.codes.seen(entry.code, current or None)
        if state != pairscripts.DONE:
            return None
        attempt.settled_honest()
        self.codes.swapped(seen, paired, 1)
        self.store.created(token, raw, written)
        self._paired_here(entry, token)
        return token, written

    async def _pair(self, entry: PendingCode, seen: Seen, sid: str) -> tuple[str, Session] | None:
        """The first tracker: a new session, linked to the code unless another won the race."""
        token, session = self._new_session(entry, sid)
        await self.store.create(token, session)
        if await self.codes.put(replace(entry, session_token=token), seen) is None:
            await self.store.discard(token)
            return None
        self._paired_here(entry, token)
        return token, session

    async def _join_trackers(
        self, sid: str, token: str, change: Change[T], admitted: Callable[[T], bool]
    ) -> tuple[Session, T] | None:
        """The record change that makes `sid` a tracker of an existing session (`admitted`
        reads its result). The socket is in the trackers' room from before the change commits:
        whatever the trackers are told once the record names it (an alert fired on any
        instance, a check-in) reaches it, where entering after the commit would miss what is
        told in between. Out of the room again if not admitted (unless it was in before)."""
        room = trackers_room(token)
        member = self.presence.holds(sid, token, Role.TRACKER)
        await self.sio.enter_room(sid, room)
        updated = None
        try:
            updated = await self.store.update(token, change)
        finally:
            if not member and (updated is None or not admitted(updated[1])):
                await self.sio.leave_room(sid, room)
        return updated

    def _newest(self, token: str, joined: Session) -> Session:
        """The record as this instance holds it now (`joined`: as the join read it)."""
        newest = self.store.cached(token)
        return newest if newest is not None else joined

    async def _tracking_started(
        self,
        sid: str,
        token: str,
        session: Session,
        *,
        app: str | None = None,
        bound: bool = False,
        told: Callable[[], int] = lambda: 0,
    ) -> None:
        """`app`: the tracked socket of a session just created, bound in Redis here too (both
        bindings in one round trip); `bound`: both are bound in Redis already; `told`: the
        newest check-in told to the trackers' room during the join (presence.Joins)."""
        self.presence.bind(sid, token, Role.TRACKER)
        await self.sio.enter_room(sid, trackers_room(token))  # in already if it joined one
        if not bound:
            bindings = [(sid, token, Role.TRACKER)]
            if app is not None:
                bindings.insert(0, (app, token, Role.TRACKED))
            await self.bindings.bound_all(bindings)
        log.info("Tracker %s paired with session %s", sid, token_ref(token))
        await self.sio.emit("trackingStarted", {"sessionToken": token}, to=sid)
        tracked = self._newest(token, session).tracked_socket_id
        if tracked is not None:
            await self.sio.emit("trackerConnected", {"sessionToken": token}, to=tracked)
        if told() > (session.last_check_in or 0):
            return  # the socket heard a newer check-in: what the join read is older news
        if session.last_check_in is not None:
            await self.sio.emit(
                "checkInReceived",
                {"sessionToken": token, "timestamp": session.last_check_in},
                to=sid,
            )
        if session.pending_alert is not None:
            await self.sio.emit(
                "checkInMissed",
                {"sessionToken": token, "timestamp": session.pending_alert},
                to=sid,
            )
