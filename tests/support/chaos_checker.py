"""The invariants of a chaos run, each a pure function of its History.

Each check returns a Verdict: PASS or FAIL, how many cases it looked at (a check that looked at
nothing says so), and for a failure the evidence: which client, which session (by reference,
never the whole token), when (seconds after the start).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from server import errors

from .chaos_history import FINAL, JOIN_REPLIES, RECV, SENT, Entry, History, ref
from .chaos_view import (
    DELIVERY_MS,
    INSTANCE_FAULTS,
    View,
    confirmed,
    field_of,
    role_of,
    settled,
    timestamp_of,
)

# How long an unanswered request may still be applied after it was sent (a stalled Redis).
IN_FLIGHT_MS: Final = 10_000
HEALTH_AGREE_MS: Final = 2_000
WINDOW_MS: Final = 60_000  # the failed-attempt window (limits.py)
HEARTBEAT_LAG_MS: Final = 1_500  # how long an instance may not yet know that Redis is back
EVALUATED: Final = (errors.INVALID_OR_EXPIRED_CODE, errors.CODE_EXPIRED, errors.CODE_IN_USE)
TRACEBACK: Final = "Traceback (most recent call last)"
TIMER_REQUESTS: Final = ("checkIn", "setTimers")
TOKEN_REQUESTS: Final = ("reconnectSession", "checkIn", "setTimers", "getStatus")
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


# ----------------------------------------------------------------------------- invariants


def confirmed_checkins_persisted(h: History) -> Verdict:
    """Every confirmed check-in is in Redis (also after Redis restarted empty)."""
    view, snapshot = View(h), settled(h)
    latest: dict[str, tuple[Entry, int]] = {}
    for entry, stamp in confirmed(view):
        token = entry.token
        assert token is not None
        if token not in latest or stamp > latest[token][1]:
            latest[token] = (entry, stamp)
    evidence = []
    for token, (entry, stamp) in sorted(latest.items(), key=lambda kv: kv[1][0].t):
        record = snapshot.records.get(token)
        stored = field_of(record, "lastCheckIn")
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
    view, snapshot = View(h), settled(h)
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
        ) or (entry.event == "restStatus" and field_of(entry.payload, "status") == 404)
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
        token, due = reply.token, field_of(reply.payload, "alertTimeEnd")
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
    view, snapshot = View(h), settled(h)
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
            if e.session == token and (timestamp_of(e) or 0) >= due
        ]
        record = snapshot.records.get(token)
        pending = field_of(record, "pendingAlert")
        if heard or pending is not None:
            continue  # pending: fired, or an earlier alert nobody cleared stands for it
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
            named = [("tracked", field_of(record, "trackedSocketId"))]
            named += [("tracker", sid) for sid in field_of(record, "trackerSocketIds") or ()]
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
    view, snapshot = View(h), settled(h)
    connected, live = set(snapshot.connected), set(snapshot.live_instances)
    evidence = []
    for code, entry in sorted(snapshot.codes.items()):
        sid = field_of(entry, "tracked_sid")
        if sid is not None and sid not in connected and sid.partition(".")[0] in live:
            socket = view.sockets.get(sid)
            whose = f"{socket.client}'s, closed {view.at(socket.closed or 0)}" if socket else "?"
            evidence.append(f"code {code} owned by socket {sid} ({whose}), not connected")
    return _verdict("codes are owned by live sockets", len(snapshot.codes), evidence)


def own_code_reregisters(h: History) -> Verdict:
    """An app can always register its own code again: never `Code already in use` once the
    earlier sockets that held it are gone (1 s after they closed; 7 s when their instance died,
    which the others notice within 5 s), or while another of its sockets is open; and at the
    end each app registers it and gets codeRegistered."""
    view = View(h)
    holders = _code_holders(h)
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
        # The sockets that held the code: one refused it meanwhile never owned it.
        closed = max(
            (s.closed or 0 for s in earlier if s.opened < asked and s.sid in holders),
            default=0,
        )
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


def _code_holders(h: History) -> set[str]:
    """Sockets that held their app's code: it was registered on them, or they reconnected as
    the tracked app of its session."""
    holders = set()
    for e in h.entries:
        if e.kind != RECV or e.sid is None or e.client not in h.codes:
            continue
        payload = e.payload if isinstance(e.payload, dict) else {}
        if (e.event == "codeRegistered" and payload.get("code") == h.codes[e.client]) or (
            e.event == "sessionReconnected" and payload.get("role") == "tracked"
        ):
            holders.add(e.sid)
    return holders


def checkin_heard_once(h: History) -> Verdict:
    """Every tracker connected at a check-in hears checkInReceived once; a tracker that joins
    later hears the last confirmed check-in (or a newer one) with its join."""
    view = View(h)
    evidence, checked, excused = [], 0, 0
    for confirm, stamp in confirmed(view):
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
            if entry.event == "sessionReconnected" and role_of(entry) != "tracker":
                continue
            token = entry.session
            if not socket.open_through(entry.t + DELIVERY_MS):
                continue  # hung up before the join's last check-in could come
            request = view.request_of(entry, ("trackCode", "reconnectSession"))
            asked = request.t if request is not None else entry.t
            before = [(s, c) for c, s in confirmed(view) if c.token == token and c.t < asked - 100]
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
                and (timestamp_of(e) or 0) >= last
            ]
            confirmed_on = view.sockets.get(confirm.sid or "")
            across = confirmed_on is None or confirmed_on.instance != socket.instance
            held = view.redis_away(confirm.t - 1_000, entry.t) or view.rebasing(confirm.t)
            if not heard and across and held:
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
    view, snapshot = View(h), settled(h)
    deadlines: set[tuple[str, int]] = set()
    for entry in view.received("timersSet"):
        due = field_of(entry.payload, "alertTimeEnd")
        if entry.token is not None and isinstance(due, int | float):
            deadlines.add((entry.token, int(due)))
    fired: set[tuple[str, int]] = set()
    for entry in view.received("checkInMissed"):
        stamp = timestamp_of(entry)
        if entry.session is not None and stamp is not None:
            fired.add((entry.session, stamp))
    for token, record in snapshot.records.items():
        pending = field_of(record, "pendingAlert")
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
        due = field_of(entry.payload, "alertTimeEnd")
        if entry.token is not None and isinstance(due, int | float):
            announced.setdefault((entry.token, int(due)), entry.t)
    check_ins = [(c, view.request_of(c, ("checkIn",))) for c, _ in confirmed(view)]
    evidence, checked = [], 0
    for entry in view.received("checkInMissed"):
        stamp = timestamp_of(entry)
        if entry.session is None or stamp is None or (entry.session, stamp) not in announced:
            continue
        checked += 1
        armed = announced[(entry.session, stamp)]
        for confirm, request in check_ins:
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
    """No address has more failed code attempts evaluated in one window than the limit, across
    instances, and none is evaluated past it: a wrong code is a failed attempt; a right guess
    from a guessing address must be refused like a wrong one once the window's failures have
    reached the limit (before that, it is an honest pairing, not a failure). Counted by the
    request's window. A Redis restarted empty forgets the counts (a new count starts), and
    while Redis is away (and until an instance's next heartbeat sees it back) each instance
    counts alone: attempts answered then are not counted."""
    tries: dict[tuple[str, int, int], list[tuple[int, bool]]] = defaultdict(list)
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
        # An instance learns that Redis is back at its next heartbeat (1 s): until then it
        # counts alone, as while Redis was away.
        if view.redis_restarting(request.t - HEARTBEAT_LAG_MS, entry.t):
            continue
        epoch = sum(end <= request.t for end in restarts)
        key = (h.addresses.get(entry.client, "?"), entry.t // WINDOW_MS, epoch)
        tries[key].append((entry.t if wrong else request.t, wrong))
    counts: dict[tuple[str, int, int], int] = {}
    for key, seen in tries.items():
        failures = over = 0
        for _, wrong in sorted(seen):
            if wrong:
                failures += 1
            elif failures >= h.attempt_limit:
                over += 1  # a right guess evaluated after the limit was reached
        counts[key] = failures + over
    evidence = [
        f"{address}: {count} codes evaluated in the minute from "
        f"{time.strftime('%H:%M', time.gmtime(window * 60))} UTC (limit {h.attempt_limit})"
        for (address, window, _), count in sorted(counts.items())
        if count > h.attempt_limit
    ]
    return _verdict("failed attempts stay within the limit", len(counts), evidence)


def paired_code_keeps_its_session(h: History) -> Verdict:
    """An app that registers its code again, once paired, is given its session back (the code
    stays paired for CODE_GRACE_SECONDS after the app left: 300 s, longer than a run).

    Excused: an answer while Redis was away, or before the instance's next heartbeat saw it
    back (an instance the app did not leave from cannot know the code: it is registered afresh
    there, as documented), and, for that code, what the app is answered after it took such a
    fresh code."""
    view = View(h)
    evidence, checked = [], 0
    forfeited: set[tuple[str, object]] = set()
    for entry in view.received("codeRegistered"):
        if entry.token is None or h.roles.get(entry.client) != "tracked":
            continue
        given = field_of(entry.payload, "sessionToken")
        code = field_of(entry.payload, "code")
        if (entry.client, code) in forfeited:
            continue
        request = view.request_of(entry, ("registerCode",))
        asked = request.t if request else entry.t
        if given != entry.token and view.redis_away(asked - HEARTBEAT_LAG_MS, entry.t):
            forfeited.add((entry.client, code))
            continue
        checked += 1
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
