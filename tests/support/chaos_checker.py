"""The invariants of a chaos run, each a pure function of its History.

Each check returns a Verdict: PASS or FAIL, how many cases it looked at (a check that looked at
nothing says so), and for a failure the evidence: which client, which session (by reference,
never the whole token), when (seconds after the start).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from server import errors

from .chaos_history import (
    DISCONNECT,
    FINAL,
    JOIN_REPLIES,
    RECV,
    REPLIES,
    SENT,
    Entry,
    History,
    Snapshot,
    ref,
)

# How long after the fact a push may still arrive (a loaded 2-core machine), in ms.
DELIVERY_MS: Final = 3_000
# A deadline an instance had claimed when it died waits for its lease to run out (deadlines.py).
LEASE_MS: Final = 30_000
# How long an unanswered request may still be applied after it was sent (a stalled Redis).
IN_FLIGHT_MS: Final = 10_000
HEALTH_AGREE_MS: Final = 2_000
WINDOW_MS: Final = 60_000  # the failed-attempt window (limits.py)
EVALUATED: Final = (errors.INVALID_OR_EXPIRED_CODE, errors.CODE_EXPIRED, errors.CODE_IN_USE)
TRACEBACK: Final = "Traceback (most recent call last)"
TIMER_REQUESTS: Final = ("checkIn", "setTimers")
TOKEN_REQUESTS: Final = ("reconnectSession", "checkIn", "setTimers", "getStatus")
INSTANCE_FAULTS: Final = ("sigterm", "kill9")
REDIS_FAULTS: Final = ("redis-restart", "redis-stall")
_WHOLE_TOKEN: Final = re.compile(r"[0-9a-f]{64}")
SIX_DIGITS: Final = re.compile(r"[0-9]{6}")


@dataclass
class Verdict:
    name: str
    ok: bool
    checked: int
    evidence: list[str] = field(default_factory=list)
    note: str = ""

    def render(self, limit: int = 8) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'}  {self.name}  ({self.checked} checked"
        head += f"; {self.note})" if self.note else ")"
        lines = [head]
        for line in self.evidence[:limit]:
            lines.append("      " + _WHOLE_TOKEN.sub(lambda m: ref(m.group()), line))
        if len(self.evidence) > limit:
            lines.append(f"      ... and {len(self.evidence) - limit} more")
        return "\n".join(lines)


def _verdict(name: str, checked: int, evidence: list[str], note: str = "") -> Verdict:
    return Verdict(name, not evidence, checked, evidence, note)


# ----------------------------------------------------------------------------- the history


@dataclass
class Socket:
    sid: str
    client: str
    opened: int
    closed: int | None = None
    entries: list[Entry] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return self.sid.partition(".")[0]

    def open_through(self, t: int) -> bool:
        return self.closed is None or self.closed > t


class View:
    """The history indexed: sockets with their entries, requests with their replies."""

    def __init__(self, history: History) -> None:
        self.h = history
        self.sockets: dict[str, Socket] = {}
        for entry in sorted(history.entries, key=lambda e: e.t):  # stable: ties keep order
            if entry.sid is None:
                continue
            socket = self.sockets.get(entry.sid)
            if socket is None:
                socket = self.sockets[entry.sid] = Socket(entry.sid, entry.client, entry.t)
            socket.entries.append(entry)
            if entry.kind == DISCONNECT:
                socket.closed = entry.t if socket.closed is None else socket.closed

    def at(self, t: int) -> str:
        return f"+{(t - self.h.started) / 1000:.1f}s"

    def received(self, event: str) -> Iterable[Entry]:
        return (e for e in self.h.entries if e.kind == RECV and e.event == event)

    def sent(self, events: tuple[str, ...]) -> Iterable[Entry]:
        return (e for e in self.h.entries if e.kind == SENT and e.event in events)

    def request_of(self, reply: Entry, events: tuple[str, ...]) -> Entry | None:
        """The last request of `events` sent on the reply's socket before it."""
        socket = self.sockets.get(reply.sid or "")
        found = None
        for entry in socket.entries if socket else ():
            if entry.t > reply.t:
                break
            if entry.kind == SENT and entry.event in events:
                found = entry
        return found

    def replied_at(self, request: Entry) -> int | None:
        """When the request was answered on its socket (the client waits for each answer)."""
        socket = self.sockets.get(request.sid or "")
        seen = False
        for entry in socket.entries if socket else ():
            if entry is request:
                seen = True
            elif seen and entry.kind == SENT:
                return None
            elif seen and entry.kind == RECV and entry.awaiting == request.event:
                if entry.event in (REPLIES.get(request.event), "error"):
                    return entry.t
        return None

    def joined(self, socket: Socket, token: str) -> int | None:
        """When the socket joined the session as a tracker (its join reply)."""
        for entry in socket.entries:
            if entry.kind == RECV and entry.event in JOIN_REPLIES and entry.session == token:
                if entry.event == "trackingStarted" or _role(entry) == "tracker":
                    return entry.t
        return None

    def trackers_of(self, token: str) -> list[tuple[Socket, int]]:
        joined = ((s, self.joined(s, token)) for s in self.sockets.values())
        return [(s, at) for s, at in joined if at is not None]

    def copies(self, socket: Socket, event: str, token: str, timestamp: int) -> tuple[int, int]:
        """(pushed, with a join reply) copies of `event` for (token, timestamp) on a socket.

        A join reply is followed by the last check-in and the pending alert: the first such
        event after it, within DELIVERY_MS, came with the join, not as a push.
        """
        pushed = joins = 0
        join_open: int | None = None
        for entry in socket.entries:
            if entry.kind != RECV or entry.session != token:
                continue
            if entry.event in JOIN_REPLIES:
                join_open = entry.t
                continue
            if entry.event != event:
                continue
            stamp = _timestamp(entry)
            # What a join reply carries happened before it: a newer one is a push.
            with_join = (
                join_open is not None
                and entry.t - join_open <= DELIVERY_MS
                and (stamp or 0) < join_open
            )
            join_open = None
            if stamp != timestamp:
                continue
            if with_join:
                joins += 1
            else:
                pushed += 1
        return pushed, joins

    def slack(self, t: int) -> int:
        """How late an alert due at `t` may fire: delivery time, plus the faults around it."""
        slack = DELIVERY_MS + 1_000
        for fault in self.h.faults:
            if fault.start > t + DELIVERY_MS or fault.end < t - 1_000:
                continue
            if fault.kind in INSTANCE_FAULTS:
                slack += LEASE_MS
            elif fault.kind in REDIS_FAULTS:
                slack += fault.end - fault.start + 2_000
        return slack

    def redis_restarting(self, start: int, end: int) -> bool:
        return any(
            f.start <= end and f.end >= start for f in self.h.faults if f.kind == "redis-restart"
        )

    def redis_away(self, start: int, end: int) -> bool:
        return any(a <= end and b >= start for a, b in self.h.redis_down())


def _role(entry: Entry) -> str | None:
    return entry.payload.get("role") if isinstance(entry.payload, dict) else None


def _timestamp(entry: Entry) -> int | None:
    if isinstance(entry.payload, dict):
        value = entry.payload.get("timestamp")
        if isinstance(value, int | float):
            return int(value)
    return None


def _field(record: dict[str, Any] | None, name: str) -> Any:
    return None if record is None else record.get(name)


def _confirmed(view: View) -> list[tuple[Entry, int]]:
    """Every checkInConfirmed with a session and its timestamp."""
    found = []
    for entry in view.received("checkInConfirmed"):
        stamp = _timestamp(entry)
        if entry.token is not None and stamp is not None and entry.phase != FINAL:
            found.append((entry, stamp))
    return found


def _settled(history: History) -> Snapshot:
    if history.settled is None:
        raise ValueError("the history has no settled snapshot: the run did not finish")
    return history.settled


# ----------------------------------------------------------------------------- invariants


def confirmed_checkins_persisted(h: History) -> Verdict:
    """Every confirmed check-in is in Redis (also after Redis restarted empty)."""
    view, snapshot = View(h), _settled(h)
    latest: dict[str, tuple[Entry, int]] = {}
    for entry, stamp in _confirmed(view):
        token = entry.token
        assert token is not None
        if token not in latest or stamp > latest[token][1]:
            latest[token] = (entry, stamp)
    evidence = []
    for token, (entry, stamp) in sorted(latest.items(), key=lambda kv: kv[1][0].t):
        record = snapshot.records.get(token)
        stored = _field(record, "lastCheckIn")
        if record is None or stored is None or stored < stamp:
            where = "no record in Redis" if record is None else f"Redis lastCheckIn={stored}"
            evidence.append(
                f"{entry.client} {ref(token)}: checkInConfirmed {stamp} at {view.at(entry.t)}; "
                f"{where}"
            )
    return _verdict("confirmed check-ins are in Redis", len(latest), evidence)


def sessions_persisted(h: History) -> Verdict:
    """Every session the server handed out is in Redis once things settle (nothing in a run
    deletes one: also after Redis restarted empty, the instances hold them and write them)."""
    view, snapshot = View(h), _settled(h)
    issued: dict[str, Entry] = {}
    for entry in view.received("trackingStarted"):
        if entry.session is not None and entry.phase != FINAL:
            issued.setdefault(entry.session, entry)
    evidence = [
        f"{entry.client} {ref(token)}: paired at {view.at(entry.t)}; no record in Redis"
        for token, entry in issued.items()
        if token not in snapshot.records
    ]
    return _verdict("every session is in Redis", len(issued), evidence)


def session_tokens_stay_valid(h: History) -> Verdict:
    """A token the server handed out is never answered `Invalid session token` (nothing in the
    run deletes a session: records live 30 days)."""
    view = View(h)
    evidence, checked = [], 0
    for entry in h.entries:
        if entry.kind == SENT and entry.event in (*TOKEN_REQUESTS, "restStatus"):
            checked += 1
        if entry.kind != RECV:
            continue
        lost = (
            entry.event == "error"
            and entry.payload == errors.INVALID_SESSION
            and entry.awaiting in TOKEN_REQUESTS
        ) or (entry.event == "restStatus" and _field(entry.payload, "status") == 404)
        if lost:
            evidence.append(
                f"{entry.client} {ref(entry.token)}: {entry.awaiting or 'GET /api/status'} "
                f"answered 'Invalid session token' at {view.at(entry.t)}"
            )
    return _verdict("session tokens stay valid", checked, evidence)


def _armed(view: View) -> list[tuple[Entry, str, int]]:
    """Alert deadlines no other check-in or timer change can have moved: (reply, token, due)."""
    armed = []
    for reply in view.received("timersSet"):
        token, due = reply.token, _field(reply.payload, "alertTimeEnd")
        if token is None or not isinstance(due, int | float) or reply.phase == FINAL:
            continue
        request = view.request_of(reply, TIMER_REQUESTS)
        if request is None:
            continue
        moved = False
        for other in view.sent(TIMER_REQUESTS):
            if other is request or other.session != token or other.t > due:
                continue
            answered = view.replied_at(other)
            if other.t >= request.t or answered is None or answered >= request.t:
                moved = True
                break
        if not moved:
            armed.append((reply, token, int(due)))
    return armed


def armed_deadlines_fire(h: History) -> Verdict:
    """Every armed deadline fires: its checkInMissed reached a tracker or is pending."""
    view, snapshot = View(h), _settled(h)
    evidence, checked, early = [], 0, 0
    seen: set[tuple[str, int]] = set()
    for reply, token, due in _armed(view):
        if (token, due) in seen:
            continue
        seen.add((token, due))
        if due + view.slack(due) > snapshot.t:
            early += 1
            continue
        checked += 1
        heard = [
            e
            for e in view.received("checkInMissed")
            if e.session == token and (_timestamp(e) or 0) >= due
        ]
        record = snapshot.records.get(token)
        pending = _field(record, "pendingAlert")
        if heard or (pending is not None and pending >= due):
            continue
        trackers = len(view.trackers_of(token))
        where = "no record in Redis" if record is None else f"record pendingAlert={pending}"
        evidence.append(
            f"{reply.client} {ref(token)}: alert due {view.at(due)} (timersSet at "
            f"{view.at(reply.t)}); no checkInMissed heard by its {trackers} tracker socket(s); "
            f"{where}"
        )
    return _verdict("armed deadlines fire", checked, evidence, f"{early} not due yet")


def no_ghost_sockets(h: History) -> Verdict:
    """Once things settle no record names a socket that is not connected (and once every
    client has hung up, none names any)."""
    view = View(h)
    evidence, checked = [], 0
    for label, snapshot in (("settled", h.settled), ("all gone", h.emptied)):
        if snapshot is None:
            continue
        connected = set(snapshot.connected)
        for token, record in snapshot.records.items():
            checked += 1
            named = [("tracked", _field(record, "trackedSocketId"))]
            named += [("tracker", sid) for sid in _field(record, "trackerSocketIds") or ()]
            for role, sid in named:
                if sid is None or sid in connected:
                    continue
                socket = view.sockets.get(sid)
                whose = (
                    f"{socket.client}'s, closed {view.at(socket.closed)}"
                    if socket and socket.closed
                    else (f"{socket.client}'s" if socket else "unknown")
                )
                alive = sid.partition(".")[0] in snapshot.live_instances
                whose += ", its instance alive" if alive else ", its instance dead"
                evidence.append(
                    f"{label} {view.at(snapshot.t)}: {ref(token)} names {role} socket {sid} "
                    f"({whose}) that is not connected"
                )
    return _verdict("no record names a socket that is not connected", checked, evidence)


def codes_owned_by_live_sockets(h: History) -> Verdict:
    """After the settle, a code's owner is a connected socket, or nobody: a socket of a live
    instance that has gone still holding a code is a ghost. (An owner on a dead instance
    counts as gone: every instance reads it so.)"""
    view, snapshot = View(h), _settled(h)
    connected, live = set(snapshot.connected), set(snapshot.live_instances)
    evidence = []
    for code, entry in sorted(snapshot.codes.items()):
        sid = _field(entry, "tracked_sid")
        if sid is not None and sid not in connected and sid.partition(".")[0] in live:
            socket = view.sockets.get(sid)
            whose = f"{socket.client}'s, closed {view.at(socket.closed or 0)}" if socket else "?"
            evidence.append(f"code {code} owned by socket {sid} ({whose}), not connected")
    return _verdict("codes are owned by live sockets", len(snapshot.codes), evidence)


def own_code_reregisters(h: History) -> Verdict:
    """An app can always register its own code again: never `Code already in use` once its
    earlier sockets are gone (1 s after they closed; 7 s when their instance died, which the
    others notice within 5 s); and at the end each app registers it and gets codeRegistered."""
    view = View(h)
    evidence = []
    for entry in h.entries:
        if entry.kind != RECV or entry.payload != errors.CODE_IN_USE:
            continue
        if entry.client not in h.codes or entry.awaiting != "registerCode":
            continue
        request = view.request_of(entry, ("registerCode",))
        asked = request.t if request is not None else entry.t
        earlier = [
            s for s in view.sockets.values() if s.client == entry.client and s.sid != entry.sid
        ]
        if any(s.opened < asked and s.open_through(asked) for s in earlier):
            continue  # another of its sockets is still open: in use indeed
        closed = max((s.closed or 0 for s in earlier if s.opened < asked), default=0)
        died = any(
            f.kind in INSTANCE_FAULTS and f.start - 1_000 <= closed <= f.end + 1_000
            for f in h.faults
        )
        if asked - closed > (7_000 if died else 1_000):
            evidence.append(
                f"{entry.client}: registerCode({h.codes[entry.client]}) at {view.at(asked)} "
                f"answered 'Code already in use', its last other socket closed {view.at(closed)}"
            )
    for client, code in sorted(h.codes.items()):
        probes = [
            e
            for e in h.entries
            if e.client == client and e.phase == FINAL and e.event == "registerCode"
        ]
        replies = [
            e
            for e in h.entries
            if e.client == client and e.phase == FINAL and e.kind == RECV
            if e.awaiting == "registerCode"
        ]
        if not probes:
            evidence.append(f"{client}: code {code} was not probed (could not connect)")
        elif not replies:
            evidence.append(f"{client}: registerCode({code}) at {view.at(probes[0].t)}: no answer")
        elif replies[0].event != "codeRegistered":
            evidence.append(
                f"{client}: registerCode({code}) at {view.at(probes[0].t)} answered "
                f"{replies[0].event} {replies[0].payload!r}"
            )
    return _verdict("each app re-registers its own code", len(h.codes), evidence)


def checkin_heard_once(h: History) -> Verdict:
    """Every tracker connected at a check-in hears checkInReceived once; a tracker that joins
    later hears the last confirmed check-in (or a newer one) with its join."""
    view = View(h)
    evidence, checked, excused = [], 0, 0
    for confirm, stamp in _confirmed(view):
        token = confirm.token
        assert token is not None
        request = view.request_of(confirm, ("checkIn",))
        sent = request.t if request is not None else confirm.t
        tracked = view.sockets.get(confirm.sid or "")
        for socket, joined in view.trackers_of(token):
            if joined > sent or not socket.open_through(confirm.t + view.slack(confirm.t)):
                continue
            checked += 1
            pushed, with_join = view.copies(socket, "checkInReceived", token, stamp)
            if pushed > 1:
                evidence.append(
                    f"{socket.client} {ref(token)}: checkInReceived {stamp} pushed {pushed} times"
                )
            if pushed + with_join:
                continue
            across = tracked is None or tracked.instance != socket.instance
            if across and view.redis_away(sent, confirm.t + 1_000):
                excused += 1  # the relay between instances is Redis
                continue
            evidence.append(
                f"{socket.client} {ref(token)} (connected {view.at(socket.opened)}-"
                f"{view.at(socket.closed) if socket.closed else 'end'}): never heard "
                f"checkInReceived {stamp}, confirmed to {confirm.client} at {view.at(confirm.t)}"
            )
    for socket in view.sockets.values():
        for entry in socket.entries:
            if entry.kind != RECV or entry.event not in JOIN_REPLIES or entry.session is None:
                continue
            if entry.event == "sessionReconnected" and _role(entry) != "tracker":
                continue
            token = entry.session
            if not socket.open_through(entry.t + DELIVERY_MS):
                continue  # hung up before the join's last check-in could come
            request = view.request_of(entry, ("trackCode", "reconnectSession"))
            asked = request.t if request is not None else entry.t
            before = [(s, c) for c, s in _confirmed(view) if c.token == token and c.t < asked - 100]
            if not before:
                continue
            checked += 1
            last, confirm = max(before, key=lambda sc: sc[0])
            heard = [
                e
                for e in socket.entries
                if e.kind == RECV
                and e.event == "checkInReceived"
                and e.session == token
                and entry.t <= e.t <= entry.t + DELIVERY_MS
                and (_timestamp(e) or 0) >= last
            ]
            confirmed_on = view.sockets.get(confirm.sid or "")
            across = confirmed_on is None or confirmed_on.instance != socket.instance
            if not heard and across and view.redis_away(confirm.t - 1_000, entry.t):
                excused += 1  # held in the other instance's memory while Redis was away
            elif not heard:
                evidence.append(
                    f"{socket.client} {ref(token)}: joined at {view.at(entry.t)} without "
                    f"hearing the last confirmed check-in {last}"
                )
    return _verdict(
        "trackers hear each check-in once", checked, evidence, f"{excused} excused: Redis away"
    )


def missed_checkin_reaches_trackers_once(h: History) -> Verdict:
    """Every missed check-in reaches each tracker connected when it fires, exactly once.

    A missed check-in is an alert deadline (an alertTimeEnd the app was told) that fired: some
    tracker heard it, or the record holds it pending. (getStatus makes an alert pending with
    its own time, as the Node server did; the push is the deadline's.)"""
    view, snapshot = View(h), _settled(h)
    deadlines: set[tuple[str, int]] = set()
    for entry in view.received("timersSet"):
        due = _field(entry.payload, "alertTimeEnd")
        if entry.token is not None and isinstance(due, int | float):
            deadlines.add((entry.token, int(due)))
    fired: set[tuple[str, int]] = set()
    for entry in view.received("checkInMissed"):
        stamp = _timestamp(entry)
        if entry.session is not None and stamp is not None:
            fired.add((entry.session, stamp))
    for token, record in snapshot.records.items():
        pending = _field(record, "pendingAlert")
        if pending is not None:
            fired.add((token, int(pending)))
    fired &= deadlines
    evidence, checked, early = [], 0, 0
    for token, stamp in sorted(fired, key=lambda f: f[1]):
        deliver_by = stamp + view.slack(stamp)
        if deliver_by > snapshot.t:
            early += 1
            continue
        for socket, joined in view.trackers_of(token):
            pushed, with_join = view.copies(socket, "checkInMissed", token, stamp)
            if pushed > 1:
                evidence.append(
                    f"{socket.client} {ref(token)}: checkInMissed {stamp} pushed {pushed} times"
                )
            if joined > stamp or not socket.open_through(deliver_by):
                continue
            checked += 1
            if pushed + with_join == 0:
                evidence.append(
                    f"{socket.client} {ref(token)} (joined {view.at(joined)}, open until "
                    f"{view.at(socket.closed) if socket.closed else 'end'}): never heard the "
                    f"missed check-in of {view.at(stamp)}"
                )
    return _verdict(
        "missed check-ins reach each tracker once", checked, evidence, f"{early} not due yet"
    )


def no_false_alarms(h: History) -> Verdict:
    """No tracker hears of a missed check-in for a deadline that a confirmed check-in had
    already moved: the check-in was sent after the deadline was set, and confirmed before it."""
    view = View(h)
    announced: dict[tuple[str, int], int] = {}
    for entry in view.received("timersSet"):
        due = _field(entry.payload, "alertTimeEnd")
        if entry.token is not None and isinstance(due, int | float):
            announced.setdefault((entry.token, int(due)), entry.t)
    confirmed = [(c, view.request_of(c, ("checkIn",))) for c, _ in _confirmed(view)]
    evidence, checked = [], 0
    for entry in view.received("checkInMissed"):
        stamp = _timestamp(entry)
        if entry.session is None or stamp is None or (entry.session, stamp) not in announced:
            continue
        checked += 1
        armed = announced[(entry.session, stamp)]
        for confirm, request in confirmed:
            if request is None or confirm.token != entry.session:
                continue
            if armed < request.t and confirm.t < stamp - 200:
                if view.redis_away(request.t, stamp):
                    break  # the check-in may be held in one instance while another fires
                evidence.append(
                    f"{entry.client} {ref(entry.session)}: checkInMissed for {view.at(stamp)} "
                    f"at {view.at(entry.t)}, but {confirm.client} had checked in at "
                    f"{view.at(confirm.t)}"
                )
                break
    return _verdict("no alert for a deadline a check-in moved", checked, evidence)


def attempt_limit_holds(h: History) -> Verdict:
    """No address has more code attempts evaluated in one window than the limit, across
    instances. Counted: wrong-code answers, and from a guessing address a right guess too (it
    was evaluated: past the limit it must be refused like a wrong one), whose request went out
    in the same window. A Redis restarted empty forgets the counts (a new count starts), and
    while Redis is away each instance counts alone: attempts answered then are not counted."""
    counts: dict[tuple[str, int, int], int] = defaultdict(int)
    view = View(h)
    restarts = sorted(f.end for f in h.faults if f.kind == "redis-restart")
    for entry in h.entries:
        if entry.kind != RECV:
            continue
        wrong = entry.event == "error" and entry.payload in EVALUATED
        guessed = entry.event == "trackingStarted" and h.roles.get(entry.client) == "guesser"
        if not (wrong or guessed):
            continue
        request = view.request_of(entry, ("trackCode", "registerCode"))
        if request is None or request.t // WINDOW_MS != entry.t // WINDOW_MS:
            continue
        if view.redis_restarting(request.t, entry.t):
            continue
        epoch = sum(end <= request.t for end in restarts)
        counts[(h.addresses.get(entry.client, "?"), entry.t // WINDOW_MS, epoch)] += 1
    evidence = [
        f"{address}: {count} codes evaluated in the minute from "
        f"{time.strftime('%H:%M', time.gmtime(window * 60))} UTC (limit {h.attempt_limit})"
        for (address, window, _), count in sorted(counts.items())
        if count > h.attempt_limit
    ]
    return _verdict("failed attempts stay within the limit", len(counts), evidence)


def paired_code_keeps_its_session(h: History) -> Verdict:
    """An app that registers its code again, once paired, is given its session back (the code
    stays paired for CODE_GRACE_SECONDS after the app left: 300 s, longer than a run)."""
    view = View(h)
    evidence, checked = [], 0
    for entry in view.received("codeRegistered"):
        if entry.token is None or h.roles.get(entry.client) != "tracked":
            continue
        checked += 1
        given = _field(entry.payload, "sessionToken")
        if given != entry.token:
            evidence.append(
                f"{entry.client} {ref(entry.token)}: registerCode of its paired code answered "
                f"at {view.at(entry.t)} with sessionToken {ref(given)}"
            )
    return _verdict("a paired code keeps its session", checked, evidence)


def wrong_codes_get_node_words(h: History) -> Verdict:
    """Any six-digit string that is not a live code is answered `Invalid or expired code` (the
    Node server's words, which the apps show), never a format complaint."""
    view = View(h)
    evidence, checked = [], 0
    for entry in view.received("error"):
        socket = view.sockets.get(entry.sid or "")
        if socket is None or entry.awaiting != "trackCode":
            continue
        # A burst's answers come in any order: whichever of its codes this answer is for,
        # every code the socket had sent lately was six digits.
        asked = [
            e.payload
            for e in socket.entries
            if e.kind == SENT and e.event == "trackCode" and 0 <= entry.t - e.t <= IN_FLIGHT_MS
        ]
        if not asked or not all(isinstance(c, str) and SIX_DIGITS.fullmatch(c) for c in asked):
            continue
        checked += 1
        if entry.payload == errors.INVALID_CODE:
            odd = [c for c in asked if c.startswith("0")] or asked
            evidence.append(
                f"{entry.client}: trackCode of one of {odd!r} at {view.at(entry.t)} "
                f"answered {entry.payload!r}"
            )
    return _verdict("six-digit codes get the Node server's words", checked, evidence)


def healthz_agrees(h: History) -> Verdict:
    """/healthz says "redis": "up" (200) exactly when Redis answers, give or take 2 s."""
    view = View(h)
    changes = sorted({t for a, b in h.redis_down() for t in (a, b)})
    down = h.redis_down()
    restarting = [
        (f.instance, f.start, f.end + 1_000) for f in h.faults if f.kind in INSTANCE_FAULTS
    ]
    evidence, checked = [], 0
    for sample in h.health:
        if not isinstance(sample.status, int):
            continue  # no answer: says nothing about Redis
        if any(i == sample.instance and a <= sample.t <= b for i, a, b in restarting):
            continue
        if any(sample.t - HEALTH_AGREE_MS < t <= sample.t for t in changes):
            continue  # Redis changed state less than 2 s ago
        checked += 1
        truth = "down" if any(a <= sample.t <= b for a, b in down) else "up"
        said = "up" if sample.status == 200 and sample.redis == "up" else "down"
        if said != truth:
            evidence.append(
                f"instance {sample.instance} at {view.at(sample.t)}: /healthz {sample.status} "
                f"redis={sample.redis!r} while Redis was {truth}"
            )
    return _verdict("/healthz agrees with Redis within 2 s", checked, evidence)


def logs_clean(h: History) -> Verdict:
    """No traceback in any server log, and every SIGTERM ends with exit code 0."""
    evidence = []
    for name, text in sorted(h.logs.items()):
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if TRACEBACK not in line:
                continue
            error = next(
                (ln for ln in lines[number + 1 :] if ln and not ln.startswith((" ", "\t"))), "?"
            )
            context = lines[number - 1] if number else ""
            evidence.append(f"{name}:{number + 1}: {error.strip()[:160]} (after: {context[:120]})")
    for name, codes in sorted(h.exit_codes.items()):
        for code in codes:
            if code != 0:
                evidence.append(f"{name}: exit code {code} after SIGTERM")
    return _verdict("no traceback in any log", len(h.logs), evidence)


def memory_returns(h: History) -> Verdict:
    """Each instance's RSS after the churn is within the slack of its baseline."""
    evidence = [
        f"instance {m.instance}: RSS {m.baseline_kb // 1024} MB at start, "
        f"{m.final_kb // 1024} MB after the churn (slack {h.memory_slack_kb // 1024} MB)"
        for m in h.memory
        if m.final_kb - m.baseline_kb > h.memory_slack_kb
    ]
    figures = ", ".join(f"{m.baseline_kb // 1024}->{m.final_kb // 1024} MB" for m in h.memory)
    return _verdict("memory returns to its baseline", len(h.memory), evidence, figures)


CHECKS: Final[tuple[Callable[[History], Verdict], ...]] = (
    confirmed_checkins_persisted,
    sessions_persisted,
    session_tokens_stay_valid,
    armed_deadlines_fire,
    no_ghost_sockets,
    codes_owned_by_live_sockets,
    own_code_reregisters,
    paired_code_keeps_its_session,
    checkin_heard_once,
    missed_checkin_reaches_trackers_once,
    no_false_alarms,
    attempt_limit_holds,
    wrong_codes_get_node_words,
    healthz_agrees,
    logs_clean,
    memory_returns,
)


def check(history: History) -> list[Verdict]:
    return [each(history) for each in CHECKS]
