"""A chaos run's history indexed for the checker: sockets with their entries, requests with
their answers, and the faults around a moment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

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
)

# After Redis came back empty, each instance holds its changes until its copies are written
# back and a pause for the others' is over (persistence.REBASE_SECONDS): a heartbeat (1.5 s),
# the pause (2 s) and a margin. Changes confirmed then are in that instance's memory only, as
# while Redis is away (docs/operations.md).
REBASE_WINDOW_MS: Final = 4_000

# How long after the fact a push may still arrive (a loaded 2-core machine), in ms.
DELIVERY_MS: Final = 3_000
# A deadline an instance had claimed when it died waits for its lease to run out (deadlines.py).
LEASE_MS: Final = 30_000
INSTANCE_FAULTS: Final = ("sigterm", "kill9")
REDIS_FAULTS: Final = ("redis-restart", "redis-stall")


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
                if entry.event == "trackingStarted" or role_of(entry) == "tracker":
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
            stamp = timestamp_of(entry)
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

    def rebasing(self, t: int) -> bool:
        """Whether `t` falls in the moment after Redis came back empty in which instances hold
        their changes while the copies are written back."""
        return any(
            f.end <= t <= f.end + REBASE_WINDOW_MS
            for f in self.h.faults
            if f.kind == "redis-restart"
        )


def role_of(entry: Entry) -> str | None:
    return entry.payload.get("role") if isinstance(entry.payload, dict) else None


def timestamp_of(entry: Entry) -> int | None:
    if isinstance(entry.payload, dict):
        value = entry.payload.get("timestamp")
        if isinstance(value, int | float):
            return int(value)
    return None


def field_of(record: dict[str, Any] | None, name: str) -> Any:
    return None if record is None else record.get(name)


def confirmed(view: View) -> list[tuple[Entry, int]]:
    """Every checkInConfirmed with a session and its timestamp."""
    found = []
    for entry in view.received("checkInConfirmed"):
        stamp = timestamp_of(entry)
        if entry.token is not None and stamp is not None and entry.phase != FINAL:
            found.append((entry, stamp))
    return found


def settled(history: History) -> Snapshot:
    if history.settled is None:
        raise ValueError("the history has no settled snapshot: the run did not finish")
    return history.settled
