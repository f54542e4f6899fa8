"""A tracker joins a session while something happens to it: the handler is stopped at each
point where it waits (a store, code or binding call, before it and after it), and an alert or
a check-in runs there. Whatever the trackers are told in that moment must reach the one that
joins, either through the record it reads or as it is told to the trackers' room.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import socketio

from server import rules
from server.clock import wall_ms
from server.instances import Instances
from server.presence import Joins
from server.relay import Relay
from server.store import change_with
from server.transport import DirectManager
from tests.support.fakes import START
from tests.test_alerts import MIN, World

Action = Callable[[World], Awaitable[Any]]

# What a handler may wait on: each call is a point where another task can run.
WAITS = {
    "store": ("load", "update", "current", "create"),
    "bindings": ("bound", "bound_all"),
    "codes": ("get", "put", "delete", "for_token", "retire_pending"),
}


class Interleaving:
    """Runs `action` once, at the `at`-th call (from 1) to anything in WAITS, before the call
    or after it."""

    def __init__(self, world: World, action: Action, at: int, after: bool) -> None:
        self.world, self.action, self.at, self.after = world, action, at, after
        self.calls = 0
        self.ran = False
        targets = {
            "store": world.store,
            "bindings": world.events.bindings,
            "codes": world.events.codes,
        }
        for name, methods in WAITS.items():
            for method in methods:
                target = targets[name]
                setattr(target, method, self._wrap(getattr(target, method)))

    def _wrap(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(call)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            due = self.calls == self.at and not self.ran
            if due and not self.after:
                await self._run()
            result = await call(*args, **kwargs)
            if due and self.after:
                await self._run()
            return result

        return wrapped

    async def _run(self) -> None:
        self.ran = True
        await self.action(self.world)


async def armed_world(missed: bool = False) -> tuple[World, str]:
    """A pair whose tracked person checked in at START with timers of 1 and 2 minutes; a
    second later, or (`missed`) a second after the alert was told."""
    world = World()
    token = await world.pair()
    await world.send("t", "checkIn", token)
    await world.set_timers(1, 2)
    if missed:
        await world.at(2 * MIN)
    world.clock.now += 1_000
    return world, token


async def rejoin(world: World, token: str) -> None:
    await world.send("b", "reconnectSession", {"sessionToken": token, "role": "tracker"})


async def pair_again(world: World, token: str) -> None:
    await world.send("b", "trackCode", "123456")
    assert world.sio.to("b", "trackingStarted") == [{"sessionToken": token}]


JOINS = {"reconnectSession": rejoin, "trackCode of a paired code": pair_again}


async def alert(world: World) -> None:
    assert await world.at(2 * MIN) >= 1


async def check_in(world: World) -> None:
    await world.send("t", "checkIn", world.token)


async def check_in_elsewhere(world: World) -> None:
    """A check-in on another instance: the record written (in Redis: a join here that reads
    it later sees it), then its checkInReceived relayed to this instance's trackers. Nothing
    of it passes through this instance's handlers."""
    now = world.clock.now
    await world.store.update(world.token, change_with(rules.check_in, now))
    told = {"sessionToken": world.token, "timestamp": now}
    await world.sio.emit("checkInReceived", told, to=f"trackers:{world.token}")


def heard_the_alert(world: World, token: str) -> None:
    due = START + 2 * MIN
    assert world.missed("a") == [{"sessionToken": token, "timestamp": due}]
    assert {"sessionToken": token, "timestamp": due} in world.missed("b")


def heard_the_check_in(world: World, token: str) -> None:
    session = world.store.cached(token)
    assert session is not None and session.last_check_in == world.clock.now
    last_word_is_the_check_in(world, token)


def last_word_is_the_check_in(world: World, token: str) -> None:
    """Both trackers' last word is the check-in that ran in the join: no older state after
    it (an earlier check-in, or the alert it cleared)."""
    for tracker in ("a", "b"):
        told = [
            (event, data)
            for to, event, data in world.sio.sent
            if to == tracker and event in ("checkInReceived", "checkInMissed")
        ]
        assert told[-1] == (
            "checkInReceived",
            {"sessionToken": token, "timestamp": world.clock.now},
        )


ACTIONS: dict[str, tuple[bool, Action, Callable[[World, str], None]]] = {
    "an alert fires": (False, alert, heard_the_alert),
    "the tracked person checks in": (False, check_in, heard_the_check_in),
    "the tracked person checks in after a missed alert": (True, check_in, heard_the_check_in),
    "the tracked person checks in on another instance": (
        False,
        check_in_elsewhere,
        heard_the_check_in,
    ),
    "the tracked person checks in on another instance after a missed alert": (
        True,
        check_in_elsewhere,
        heard_the_check_in,
    ),
}


@pytest.mark.parametrize("join", JOINS)
@pytest.mark.parametrize("happens", ACTIONS)
async def test_what_the_trackers_are_told_reaches_one_that_joins_at_that_moment(
    join: str, happens: str
) -> None:
    missed, action, check = ACTIONS[happens]
    points = 0
    for after in (False, True):
        at = 1
        while True:
            world, token = await armed_world(missed)
            interleaving = Interleaving(world, action, at, after)
            await JOINS[join](world, token)
            if not interleaving.ran:
                break  # past the handler's last wait
            session = world.store.cached(token)
            assert session is not None and "b" in session.tracker_socket_ids
            assert "b" in world.sio.rooms[f"trackers:{token}"]
            check(world, token)
            points += 1
            at += 1
    assert points >= 4  # the handler waits at least twice: before and after each


@pytest.mark.parametrize("relayed", [False, True], ids=["emitted here", "relayed"])
async def test_the_socketio_manager_tells_joins_of_check_ins_to_the_room(relayed: bool) -> None:
    """The real path: python-socketio's manager (ours without Redis, the relay with it) and
    server/transport.deliver, which tells presence.Joins while a join is under way, and only
    then."""
    token = "ab" * 32
    manager = Relay(fakeredis.FakeAsyncRedis(), Instances(wall_ms)) if relayed else DirectManager()
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
    sent: list[Any] = []

    async def send(eio_sid: str, pkt: Any) -> None:
        sent.append((eio_sid, pkt.data))

    sio._send_eio_packet = send  # type: ignore[method-assign]
    manager.basic_enter_room("b", "/", f"trackers:{token}", eio_sid="eio-b")
    joins = Joins(manager)
    told = {"sessionToken": token, "timestamp": 1_800_000_001_000}

    async def tell(data: dict[str, Any]) -> None:
        if relayed:  # as a message from another instance arrives
            await manager._handle_emit(
                {"event": "checkInReceived", "data": [data], "room": f"trackers:{token}"}
            )
        else:
            await sio.emit("checkInReceived", data, to=f"trackers:{token}")

    with joins.watching(token) as newest:
        assert manager.watch is not None and newest() == 0
        await tell(told)
        await tell({**told, "timestamp": 1_800_000_000_000})  # an older one, late
        assert newest() == 1_800_000_001_000
    assert manager.watch is None  # no join under way: emits pay nothing
    assert len(sent) == 2 and all(eio_sid == "eio-b" for eio_sid, _ in sent)
