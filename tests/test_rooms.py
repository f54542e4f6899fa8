"""Each socket's rooms, indexed (server.rooms): the same rooms as python-socketio's own manager
keeps, after any sequence of joins, leaves and disconnects, and a disconnect whose work does
not grow with the sockets connected."""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Callable, Iterator
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
import socketio

from server.transport import DirectManager

NAMESPACES = ("/", "/other")


def manager_of(kind: type[Any]) -> Any:
    """A manager as a server sets it up, with its own predictable socket ids."""
    ids = (f"sid{n}" for n in range(1_000_000))
    manager = kind()
    manager.server = SimpleNamespace(eio=SimpleNamespace(generate_id=lambda: next(ids)))
    return manager


def state(manager: Any) -> dict[str, Any]:
    """What the managers must agree on."""
    sids = {sid for ns in manager.rooms.values() for sid in ns.get(None, {})}
    return {
        "rooms": {
            ns: {room: dict(members) for room, members in rooms.items()}
            for ns, rooms in manager.rooms.items()
        },
        # The sockets still in the table: python-socketio's lists take a sid twice (a
        # disconnect begun twice) and its disconnect removes one, so a sid gone stays there
        # for good; ours keeps each once.
        "pending_connect": live(manager, manager.pending_connect),
        "pending_disconnect": live(manager, manager.pending_disconnect),
        "get_rooms": {
            (ns, sid): sorted(map(str, manager.get_rooms(sid, ns)))
            for ns in NAMESPACES
            for sid in sids
        },
        "is_connected": {
            (ns, sid): manager.is_connected(sid, ns) for ns in NAMESPACES for sid in sids
        },
    }


async def connect(manager: Any, eio_sid: str, namespace: str) -> str | None:
    """As the server connects a socket: pre-connected, then connected (None: it was)."""
    sid = await manager.pre_connect(eio_sid, namespace)
    if sid is not None:
        await manager.connect(sid, namespace)
    return sid


def live(manager: Any, pending: dict[str, Any]) -> dict[str, set[str]]:
    return {
        ns: {sid for sid in s if sid in manager.rooms.get(ns, {}).get(None, {})}
        for ns, s in pending.items()
    }


def steps(seed: int, count: int) -> Iterator[Callable[[Any], Any]]:
    """Random operations, the same for each manager they are applied to."""
    rng = random.Random(seed)
    eio_sids = [f"eio{n}" for n in range(12)]
    sids = [f"sid{n}" for n in range(30)]  # as manager_of's servers hand them out
    rooms = ["tokenA", "tokenB", "tokenC", 7]
    for _ in range(count):
        ns = rng.choice(NAMESPACES)
        sid = rng.choice(sids)
        room = rng.choice(rooms)
        eio_sid = rng.choice(eio_sids)
        yield rng.choice(
            [
                lambda m, ns=ns, eio_sid=eio_sid: connect(m, eio_sid, ns),
                lambda m, ns=ns, eio_sid=eio_sid: m.pre_connect(eio_sid, ns),
                lambda m, ns=ns, sid=sid, room=room: m.enter_room(sid, ns, room),
                lambda m, ns=ns, sid=sid, room=room: m.basic_enter_room(sid, ns, room),
                lambda m, ns=ns, sid=sid, room=room: m.leave_room(sid, ns, room),
                lambda m, ns=ns, room=room: m.close_room(room, ns),
                lambda m, ns=ns, sid=sid: m.pre_disconnect(sid, ns),
                lambda m, ns=ns, sid=sid: m.disconnect(sid, ns),
                lambda m, ns=ns, sid=sid: m.basic_disconnect(sid, ns),
            ]
        )


async def outcome(step: Callable[[Any], Any], manager: Any) -> str:
    try:
        result = step(manager)
        return repr(await result if inspect.isawaitable(result) else result)
    except Exception as exc:  # the same refusal (e.g. entering a room unconnected) from both
        return type(exc).__name__


class Reference(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager with the one difference ours makes on purpose (below): a
    socket already gone enters no room."""

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        table = self.rooms.get(namespace)
        if eio_sid is None and table is not None and sid not in table.get(None, ()):
            return
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)


@pytest.mark.parametrize("seed", range(40))
async def test_each_sockets_rooms_are_the_ones_python_socketio_keeps(seed: int) -> None:
    ours, stock = manager_of(DirectManager), manager_of(Reference)
    for step in steps(seed, 150):
        assert await outcome(step, ours) == await outcome(step, stock)
        assert state(ours) == state(stock)
    # What the index holds is exactly what the table says.
    expected: dict[tuple[str, str], set[Any]] = {}
    for ns, table in ours.rooms.items():
        for room, members in table.items():
            for sid in members:
                expected.setdefault((ns, sid), set()).add(room)
    assert {key: set(rooms) for key, rooms in ours.rooms_of.items()} == expected


async def test_a_socket_already_gone_enters_no_room_and_leaves_none_behind() -> None:
    # A tracker's pairing held up by a frozen Redis longer than its disconnect waits for it
    # enters the trackers' room after the socket left.
    ours, stock = manager_of(DirectManager), manager_of(socketio.AsyncManager)
    for manager in (ours, stock):
        gone = await connect(manager, "eio0", "/")
        await connect(manager, "eio1", "/")
        manager.basic_disconnect(gone, "/")

    await ours.enter_room("sid0", "/", "token")

    assert "token" not in ours.rooms["/"] and ("/", "sid0") not in ours.rooms_of
    assert ours.get_rooms("sid0", "/") == []
    # python-socketio's own raises, and the room it made stays, empty, for good.
    with pytest.raises(KeyError):
        await stock.enter_room("sid0", "/", "token")
    assert dict(stock.rooms["/"]["token"]) == {}
    # Unconnected namespaces are refused as before.
    with pytest.raises(ValueError):
        await ours.enter_room("sid0", "/other", "token")


def calls_made(run: Callable[[], None]) -> int:
    """The Python functions called (and C functions) while `run` runs."""
    count = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


async def disconnect_calls(kind: type[Any], others: int) -> int:
    """The calls of one socket's disconnect (in its session's room) among `others` sockets,
    each in a session's room as trackers and apps are."""
    manager = manager_of(kind)
    for n in range(others):
        sid = await connect(manager, f"eio{n}", "/")
        manager.basic_enter_room(sid, "/", f"token{n // 2}")
    leaving = await connect(manager, "eio-leaving", "/")
    manager.basic_enter_room(leaving, "/", "token0")
    manager.pre_disconnect(leaving, "/")
    return calls_made(lambda: manager.basic_disconnect(leaving, "/"))


async def test_a_disconnect_costs_the_same_however_many_sockets_are_connected() -> None:
    assert await disconnect_calls(DirectManager, 10) == await disconnect_calls(DirectManager, 5_000)
    # The measure sees the difference it is there for: python-socketio's own manager tests
    # every room of the namespace.
    stock = socketio.AsyncManager
    assert await disconnect_calls(stock, 5_000) > 10 * await disconnect_calls(stock, 10)


async def test_the_pending_lists_keep_their_order_and_refuse_what_is_not_there() -> None:
    manager = manager_of(DirectManager)
    sids = [await manager.pre_connect(f"eio{n}", "/") for n in range(3)]
    assert list(manager.pending_connect["/"]) == sids
    await manager.connect(sids[1], "/")
    assert list(manager.pending_connect["/"]) == [sids[0], sids[2]]
    with pytest.raises(LookupError):
        manager.pending_connect["/"].remove("nobody")
