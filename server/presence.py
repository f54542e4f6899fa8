"""Which sessions each connected socket of this process belongs to, and in which role."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from typing import Any


class Role(enum.Enum):
    TRACKED = "tracked"
    TRACKER = "tracker"


def trackers_room(token: str) -> str:
    """The Socket.IO room of a session's connected trackers."""
    return f"trackers:{token}"


class Presence:
    def __init__(self) -> None:
        self._bindings: dict[str, set[tuple[str, Role]]] = {}

    def __len__(self) -> int:
        return len(self._bindings)

    def bind(self, sid: str, token: str, role: Role) -> None:
        self._bindings.setdefault(sid, set()).add((token, role))

    def sessions(self, sid: str, role: Role) -> list[str]:
        """The sessions the socket is bound to in that role."""
        return [token for token, held in self._bindings.get(sid, ()) if held is role]

    def holds(self, sid: str, token: str, role: Role) -> bool:
        """Whether the socket is bound to the session in that role."""
        return (token, role) in self._bindings.get(sid, ())

    def pop(self, sid: str) -> set[tuple[str, Role]]:
        return self._bindings.pop(sid, set())

    def items(self) -> list[tuple[str, set[tuple[str, Role]]]]:
        return list(self._bindings.items())


class Joins:
    """The newest check-in told to the trackers' room of each session that a tracker is
    joining now (reconnectSession, trackCode), on this instance or relayed from another: the
    joining socket is in the room from before its join is written, so it heard that check-in,
    and what the join read of the record is older news after it.

    Told by `deliver` (server/transport.py) through the socket.io manager's `watch`, which is
    set only while a join is under way: every other emit pays one attribute read.
    """

    def __init__(self, manager: Any = None) -> None:
        self.manager = manager
        self._rooms: dict[str, list[int]] = {}  # room: [joins under way, newest check-in or 0]

    @contextlib.contextmanager
    def watching(self, token: str) -> Iterator[Callable[[], int]]:
        """While a socket joins the session's trackers: yields what tells the newest check-in
        told to their room since (0: none)."""
        room = trackers_room(token)
        entry = self._rooms.setdefault(room, [0, 0])
        entry[0] += 1
        if self.manager is not None:
            self.manager.watch = self.told
        try:
            yield lambda: entry[1]
        finally:
            entry[0] -= 1
            if entry[0] == 0:
                del self._rooms[room]
                if not self._rooms and self.manager is not None:
                    self.manager.watch = None

    def told(self, event: str, room: Any, data: Any) -> None:
        if event != "checkInReceived" or not isinstance(room, str) or type(data) is not dict:
            return
        entry = self._rooms.get(room)
        timestamp = data.get("timestamp")
        if entry is not None and type(timestamp) is int and timestamp > entry[1]:
            entry[1] = timestamp
