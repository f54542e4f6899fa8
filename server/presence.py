"""Which sessions each connected socket of this process belongs to, and in which role."""

from __future__ import annotations

import enum


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
