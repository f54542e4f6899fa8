"""Property-based: random payloads and random event sequences from several clients never crash
the server, never hand a session token to a socket that had no right to it, never leave ghost
sockets in a record, and a refused event changes no session."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server import errors
from server.events import Events
from server.limits import AttemptLimiter
from server.pairing import CODE_TTL_MS
from server.store import MemoryStore
from tests.support.fakes import FakeClock, FakeSocketIO

SIDS = ["s0", "s1", "s2", "s3"]
CODES = ["111111", "222222", "333333"]


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three times in four a well-formed value, so that the flows get somewhere."""
    return st.one_of(valid, valid, valid, JUNK)


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.text(max_size=8))),
)
MINUTES = st.one_of(st.floats(min_value=0.001, max_value=100), st.integers(1, 100), JUNK)
ROLES = st.one_of(st.sampled_from(["tracked", "tracker"]), JUNK)
REASONS = st.sampled_from(["client disconnect", "transport close", "ping timeout"])


@settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class Clients(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sio = FakeSocketIO()
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        # No attempt limit here: it would soon refuse every code and hide the flows under test.
        unlimited = AttemptLimiter(self.clock, limit=10**9)
        self.events = Events(
            self.sio,  # type: ignore[arg-type]
            self.store,
            self.clock,
            code_grace_ms=60_000,
            limiter=unlimited,
        )
        self.events.attach()
        self.connected: set[str] = set()
        self.entitled: dict[str, set[str]] = {sid: set() for sid in SIDS}  # tokens a sid may see
        self.tokens: list[str] = []
        # code -> (the socket it was last registered to, when, whether a tracker paired)
        self.owner: dict[str, tuple[str, int, bool]] = {}
        self.code_of: dict[str, str] = {}  # token -> the code it was paired through

    def teardown(self) -> None:
        self.loop.close()

    def _send(self, sid: str, event: str, *args: Any) -> list[tuple[str, str, Any]]:
        before = len(self.sio.sent)
        sessions = dict(self.store._sessions)
        self.loop.run_until_complete(self.sio.handlers[event](sid, *args))
        replies = self.sio.sent[before:]
        for to, name, data in replies:
            if name == "codeRegistered" and to == sid:
                previous, since, paired = self.owner.get(data["code"], (sid, 0, False))
                expired = not paired and self.clock.now > since + CODE_TTL_MS
                # A connected owner keeps its code: nobody else may register it, least of all
                # get its session.
                assert previous == sid or expired, f"{sid} took {data['code']} from {previous}"
                self.owner[data["code"]] = (sid, self.clock.now, "sessionToken" in data)
            assert not (name == "error" and data == errors.INTERNAL), (event, args)
            token = data.get("sessionToken") if isinstance(data, dict) else None
            if token is None:
                continue
            if token not in self.tokens:
                self.tokens.append(token)
            # Learning a token is only legitimate by pairing with a code, by owning the code
            # a tracker paired with, or by reclaiming one's own code.
            if to == sid and name in ("trackingStarted", "codeRegistered"):
                self.entitled[sid].add(token)
            if name == "trackingStarted" and args[0] in self.owner:
                owner, since, _ = self.owner[args[0]]
                self.owner[args[0]] = (owner, since, True)
                self.entitled[owner].add(token)
                self.code_of[token] = args[0]
            if name == "sessionReconnected" and data["role"] == "tracked" and token in self.code_of:
                # Whoever holds the token and reconnects as the tracked person owns its code.
                self.owner[self.code_of[token]] = (to, self.clock.now, True)
            assert token in self.entitled[to], f"{name} leaked a token to {to}"
        mine = [name for to, name, _ in replies if to == sid]
        if mine and all(name == "error" for name in mine) and event != "trackCode":
            assert self.store._sessions == sessions, f"refused {event}{args} changed a session"
        return replies

    def _token(self, data: st.DataObject) -> Any:
        known = st.sampled_from(self.tokens) if self.tokens else st.nothing()
        return data.draw(st.one_of(known, st.text("0123456789abcdef", min_size=64, max_size=64)))

    @rule(sid=st.sampled_from(SIDS))
    def connect(self, sid: str) -> None:
        self.connected.add(sid)

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), reason=REASONS)
    def disconnect(self, data: st.DataObject, reason: str) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        self.connected.discard(sid)
        self.sio.leave_all(sid)
        self.loop.run_until_complete(self.events.disconnect(sid, reason))
        # A new connection with this name is a new socket that knows nothing.
        self.entitled[sid] = set()
        self.owner = {code: owner for code, owner in self.owner.items() if owner[0] != sid}

    @precondition(lambda self: len(self.connected) >= 2)
    @rule(data=st.data(), code=st.sampled_from(CODES))
    def pair(self, data: st.DataObject, code: str) -> None:
        """The honest flow, so that random events meet real sessions."""
        tracked, tracker = data.draw(st.permutations(sorted(self.connected)))[:2]
        self._send(tracked, "registerCode", code)
        self._send(tracker, "trackCode", code)

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def register_code(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        self._send(sid, "registerCode", data.draw(mostly(st.sampled_from(CODES))))

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def track_code(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        self._send(sid, "trackCode", data.draw(mostly(st.sampled_from(CODES))))

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), role=ROLES)
    def reconnect_session(self, data: st.DataObject, role: Any) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        token = self._token(data)
        self.entitled[sid].add(token)  # it names the token: it holds it
        self._send(sid, "reconnectSession", {"sessionToken": token, "role": role})

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), junk=st.booleans())
    def check_in(self, data: st.DataObject, junk: bool) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        if junk:
            self._send(sid, "checkIn", data.draw(JUNK))
            return
        token = self._token(data)
        self.entitled[sid].add(token)
        self._send(sid, "checkIn", token)

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), reminder=MINUTES, alert=MINUTES)
    def set_timers(self, data: st.DataObject, reminder: Any, alert: Any) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        token = self._token(data)
        self.entitled[sid].add(token)
        payload = {
            "sessionToken": token,
            "reminderTimeMinutes": reminder,
            "alertTimeMinutes": alert,
        }
        self._send(sid, "setTimers", payload)

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def get_status(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.connected)))
        token = self._token(data)
        self.entitled[sid].add(token)
        self._send(sid, "getStatus", data.draw(st.one_of(st.just({"sessionToken": token}), JUNK)))

    @rule(ms=st.sampled_from([1, 1_000, 30_000, 61_000, 301_000]))
    def time_passes(self, ms: int) -> None:
        self.clock.now += ms

    @invariant()
    def records_name_only_connected_sockets(self) -> None:
        for session in self.store._sessions.values():
            assert session.tracked_socket_id in (None, *self.connected)
            assert set(session.tracker_socket_ids) <= self.connected


test_random_event_sequences_keep_the_server_sound = Clients.TestCase
