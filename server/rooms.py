"""Each socket's rooms, indexed, so that a disconnect costs the same with 100 sockets or 100,000.

python-socketio finds a leaving socket's rooms by copying the namespace's table of rooms and
testing every room for the socket (`BaseManager.basic_disconnect`, and `get_rooms`). Every socket
has a room of its own and every session a trackers' room, so each disconnect scanned them all:
server CPU per tracker reconnect (drop, connect, reconnectSession) went from 0.9 ms with 200
sockets held to 3.2 ms with 5,000 and 8.6 ms with 10,000; the Node server's stays at 0.7 ms. A
redeploy that moves every client was quadratic. Its lists of sockets connecting and
disconnecting (`pending_connect`, `pending_disconnect`) were searched the same way, on every
event (`is_connected`), and grow with a wave of disconnects.

Here each socket's rooms are kept beside python-socketio's table, by the three methods that
change it, and the pending lists are ordered sets with the list methods it calls.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from socketio.base_manager import BaseManager


class SidSet(dict[str, None]):
    """The part of a list that python-socketio uses (`append`, `remove`, `in`, `len`), with a
    dict's lookups: insertion-ordered, each sid once. dict's own methods, called from C:
    `append(sid)` is `setdefault(sid)` (the value None), `remove(sid)` is `pop(sid)`, which
    python-socketio calls only for a sid it found there."""

    append = dict.setdefault
    remove = dict.pop


class PendingSids(dict[str, SidSet]):
    """namespace -> SidSet: python-socketio assigns `[]` and appends to it."""

    def __setitem__(self, namespace: str, sids: Iterable[str]) -> None:
        if not isinstance(sids, SidSet):
            sids = SidSet(dict.fromkeys(sids))
        super().__setitem__(namespace, sids)


class IndexedRooms(BaseManager):  # type: ignore[misc]
    """A socket.io manager that knows each socket's rooms (a base for ours and the relay)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_connect = PendingSids()
        self.pending_disconnect = PendingSids()
        # (namespace, sid) -> its rooms, in the order entered (None and its own room too).
        self.rooms_of: dict[tuple[str, str], dict[Hashable, None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Hashable, eio_sid: str | None = None
    ) -> None:
        """python-socketio's, except for a socket already gone: nothing happens. (Its own
        made the room, then raised KeyError looking the socket up, and the empty room stayed
        for good. An event whose handler outlives the disconnect's wait for it, a pairing
        held up by a frozen Redis, enters the room after the socket left: its handler goes
        on, and the disconnect's late bookkeeping undoes the rest.)"""
        table = self.rooms.get(namespace)  # none: python-socketio's raises its ValueError
        if eio_sid is None and table is not None and sid not in table.get(None, ()):
            return
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Hashable) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self.rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, with the socket's rooms taken from the index."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Hashable]:
        """The rooms a socket is in, its own included (as python-socketio's)."""
        return [room for room in self.rooms_of.get((namespace, sid), ()) if room is not None]
