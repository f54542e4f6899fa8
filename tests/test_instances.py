"""Several server processes sharing one Redis, each client talking to one of them directly.

Sessions, pairing codes and liveness live in Redis; events for a socket of another instance
travel through Redis pub/sub. Every socket id is `<instance>.<random>`, so a test can tell from
a client's id (and from a session record) which instance holds the socket. Each test starts
its own instances and waits until every one of them counts all the others alive (their
/metrics), so that nothing depends on how soon the heartbeats were read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.checkins import stored_record
from tests.support.flows import (
    TOKEN_RE,
    check_in,
    eventually,
    instance_of,
    new_code,
    now_ms,
    only,
    register,
    rejoin_as_tracker,
)
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]

CODE_IN_USE = "Code already in use. Generating new code..."
ALIVE_S = 5.0  # an instance without a heartbeat for this long is dead (server/instances.py)
ROUNDS = 5

StartServer = Callable[..., Awaitable[ServerProcess]]
Cluster = Callable[[int], Awaitable[list[ServerProcess]]]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def cluster(start_server: StartServer, redis_url: str) -> Cluster:
    """Factory: ``await cluster(3)`` starts 3 instances on the shared Redis and returns once
    each of them counts all 3 alive (before that, pushes to the others may not be sent)."""

    async def start(count: int) -> list[ServerProcess]:
        servers = await asyncio.gather(*(start_server(redis_url=redis_url) for _ in range(count)))
        for server in servers:
            await eventually(
                functools.partial(instances_alive, server), lambda n: n == count, within=5
            )
        return list(servers)

    return start


# ----------------------------------------------------------------------------- helpers


async def instances_alive(server: ServerProcess) -> int:
    """How many instances `server` counts alive, itself included (its /metrics)."""
    return int(value(await scrape(server.url), "alliswell_instances_alive"))


def sids(*clients: NodeClient) -> list[str]:
    """The clients' socket ids, sorted (a record's trackerSocketIds has no set order)."""
    ids = [client.sid for client in clients]
    assert all(ids), clients
    return sorted(sid for sid in ids if sid is not None)


async def first_answer(client: NodeClient, within: float = 5.0) -> tuple[str, list[Any]]:
    """The first event the server sent to `client`: (name, args)."""

    async def log() -> list[tuple[str, list[Any]]]:
        return client.log

    try:
        (event, args), *_ = await eventually(log, bool, within)
    except TimeoutError:
        raise AssertionError(f"{client.id}: no answer within {within} s") from None
    return event, args


async def track_on(tracked: NodeClient, tracker: NodeClient, code: str) -> str:
    """trackCode, with the exact payloads on both sides; returns the token."""
    tracker.emit("trackCode", code)
    started = only(await tracker.expect("trackingStarted"))
    assert set(started) == {"sessionToken"} and TOKEN_RE.match(started["sessionToken"]), started
    token: str = started["sessionToken"]
    assert only(await tracked.expect("trackerConnected")) == {"sessionToken": token}
    return token


async def set_timers(
    client: NodeClient, token: str, reminder: float, alert: float
) -> dict[str, Any]:
    """setTimers (minutes); returns the timersSet payload."""
    client.emit(
        "setTimers",
        {"sessionToken": token, "reminderTimeMinutes": reminder, "alertTimeMinutes": alert},
    )
    timers: dict[str, Any] = only(await client.expect("timersSet"))
    return timers


# ------------------------------------------------------------------------------- tests


async def test_a_code_registered_on_one_instance_pairs_a_tracker_on_another(
    cluster: Cluster, node: NodeDriver, transport: str
) -> None:
    a, b = await cluster(2)
    tracked = await node.connect(a.url, transport)
    tracker = await node.connect(b.url, transport)
    assert instance_of(tracked) != instance_of(tracker)

    before = now_ms()
    code, registered = await register(tracked)
    assert registered == {"code": code, "expiresAt": registered["expiresAt"]}
    assert abs(registered["expiresAt"] - (before + 5 * 60_000)) < 2_000

    await track_on(tracked, tracker, code)
    await tracker.expect_none("error", within=0.2)


async def test_a_check_in_reaches_trackers_on_every_instance_at_once(
    cluster: Cluster, node: NodeDriver, transport: str
) -> None:
    a, b, c = await cluster(3)
    tracked = await node.connect(a.url, transport)
    trackers = [await node.connect(b.url, transport), await node.connect(c.url, transport)]
    code, _ = await register(tracked)
    token = await track_on(tracked, trackers[0], code)
    assert await track_on(tracked, trackers[1], code) == token

    confirmed = await check_in(tracked, token)

    for tracker in trackers:
        received = only(await tracker.expect("checkInReceived", timeout=1))
        assert received == {"sessionToken": token, "timestamp": confirmed}


async def test_trackers_on_every_instance_hear_that_the_tracked_person_dropped(
    cluster: Cluster, node: NodeDriver, transport: str, redis: aioredis.Redis
) -> None:
    a, b, c = await cluster(3)
    tracked = await node.connect(a.url, transport)
    trackers = [await node.connect(b.url, transport), await node.connect(c.url, transport)]
    code, _ = await register(tracked)
    token = await track_on(tracked, trackers[0], code)
    await track_on(tracked, trackers[1], code)

    await tracked.kill_transport()

    for tracker in trackers:
        assert await tracker.expect("trackedPersonDisconnected") == []
        await tracker.expect_none("trackedPersonDisconnected", within=0.3)
    record = await stored_record(redis, token)
    assert record["trackedSocketId"] is None
    assert sorted(record["trackerSocketIds"]) == sids(*trackers)


async def test_the_tracked_person_hears_when_the_last_tracker_on_any_instance_drops(
    cluster: Cluster, node: NodeDriver, transport: str
) -> None:
    a, b, c = await cluster(3)
    tracked = await node.connect(a.url, transport)
    on_b = await node.connect(b.url, transport)
    on_c = await node.connect(c.url, transport)
    code, _ = await register(tracked)
    await track_on(tracked, on_b, code)
    await track_on(tracked, on_c, code)

    await on_c.kill_transport()
    # The tracker on B still counts, although A and C never held its socket.
    await tracked.expect_none("trackerDisconnected", within=0.7)

    await on_b.kill_transport()
    assert await tracked.expect("trackerDisconnected") == []
    await tracked.expect_none("trackerDisconnected", within=0.3)
    assert tracked.connected


async def test_trackers_racing_for_a_fresh_code_on_two_instances_join_one_session(
    cluster: Cluster, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a, b = await cluster(2)
    tokens = []
    for _ in range(ROUNDS):
        tracked = await node.connect(a.url, "websocket")
        first = await node.connect(a.url, "websocket")
        second = await node.connect(b.url, "websocket")
        code, _ = await register(tracked)

        first.emit("trackCode", code)
        second.emit("trackCode", code)

        started = [only(await t.expect("trackingStarted")) for t in (first, second)]
        token = started[0]["sessionToken"]
        assert TOKEN_RE.match(token), started
        assert started == [{"sessionToken": token}] * 2
        for _ in range(2):
            assert only(await tracked.expect("trackerConnected")) == {"sessionToken": token}
        record = await stored_record(redis, token)
        assert record["trackedSocketId"] == tracked.sid
        assert sorted(record["trackerSocketIds"]) == sids(first, second)
        tokens.append(token)
        # The session the losing tracker made for itself is gone: one record per pairing.
        assert sorted(await redis.keys("session:*")) == sorted(f"session:{t}" for t in tokens)
        for client in (first, second):
            assert client.received("error") == [], client.log


async def test_apps_racing_to_register_one_code_on_two_instances_only_one_gets_it(
    cluster: Cluster, node: NodeDriver
) -> None:
    a, b = await cluster(2)
    for _ in range(ROUNDS):  # each lost race counts as a failed attempt: stay under the limit
        apps = [await node.connect(a.url, "websocket"), await node.connect(b.url, "websocket")]
        code = new_code()

        for app in apps:
            app.emit("registerCode", code)

        answers = [await first_answer(app) for app in apps]
        assert sorted(name for name, _ in answers) == ["codeRegistered", "error"], answers
        winner, loser = apps if answers[0][0] == "codeRegistered" else apps[::-1]
        registered = only(winner.received("codeRegistered")[0])
        assert registered == {"code": code, "expiresAt": registered["expiresAt"]}
        assert loser.received("error") == [[CODE_IN_USE]]
        assert loser.received("codeRegistered") == []
        # The code is the winner's, for a tracker on either instance.
        tracker = await node.connect(loser.url, "websocket")
        await track_on(winner, tracker, code)
        await loser.expect_none("trackerConnected", within=0.2)


async def test_the_sockets_of_a_crashed_instance_stop_counting(
    cluster: Cluster, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a, b, c = await cluster(3)
    tracked = await node.connect(a.url, "websocket")
    on_b = await node.connect(b.url, "websocket")
    on_c = await node.connect(c.url, "websocket")
    code, _ = await register(tracked)
    token = await track_on(tracked, on_b, code)
    await track_on(tracked, on_c, code)

    c.kill()  # SIGKILL: C cannot take its tracker out of the record
    assert await on_c.wait_disconnect() == "transport close"
    for server in (a, b):
        await eventually(
            functools.partial(instances_alive, server), lambda n: n == 2, within=ALIVE_S + 3
        )
    # A survivor takes C's tracker out of the record, though nobody touches the session.
    await eventually(
        functools.partial(stored_record, redis, token),
        lambda record: record["trackerSocketIds"] == [on_b.sid],
        within=5,
    )

    await on_b.kill_transport()

    # C's tracker is not connected whatever the record said: B's was the last one.
    assert await tracked.expect("trackerDisconnected") == []
    record = await stored_record(redis, token)
    assert record["trackedSocketId"] == tracked.sid
    assert record["trackerSocketIds"] == []
    # The session goes on: a tracker that comes back hears the check-ins.
    last = await check_in(tracked, token)
    again = await rejoin_as_tracker(node, b.url, "websocket", token, last)
    confirmed = await check_in(tracked, token)
    assert only(await again.expect("checkInReceived")) == {
        "sessionToken": token,
        "timestamp": confirmed,
    }


async def test_a_missed_check_in_is_told_once_to_trackers_on_every_instance(
    cluster: Cluster, node: NodeDriver
) -> None:
    a, b = await cluster(2)

    async def one_session() -> None:
        tracked = await node.connect(a.url, "websocket")
        trackers = [await node.connect(s.url, "websocket") for s in (a, b)]
        code, _ = await register(tracked)
        token = await track_on(tracked, trackers[0], code)
        await track_on(tracked, trackers[1], code)
        await check_in(tracked, token)
        timers = await set_timers(tracked, token, 0.005, 0.01)  # the alert in 0.6 s

        for tracker in trackers:
            missed = only(await tracker.expect("checkInMissed", timeout=3))
            assert missed == {"sessionToken": token, "timestamp": timers["alertTimeEnd"]}
        # Both instances run the scheduler, and a tracker hears from both (its own instance
        # directly, the other through Redis): once means the deadline fired once.
        for tracker in trackers:
            await tracker.expect_none("checkInMissed", within=1.0)

    await asyncio.gather(*(one_session() for _ in range(4)))


async def test_a_reminder_is_sent_by_an_instance_that_did_not_set_the_timers(
    cluster: Cluster, node: NodeDriver
) -> None:
    a, b, c = await cluster(3)
    tracked = await node.connect(a.url, "websocket")
    tracker = await node.connect(b.url, "websocket")
    code, _ = await register(tracked)
    token = await track_on(tracked, tracker, code)
    await check_in(tracked, token)  # A and B now hold the record as it was then
    # The timers are set through C (any holder of the token may), and C leaves: whichever of
    # A and B fires the reminder, it did not see the timers being set.
    on_c = await node.connect(c.url, "websocket")
    timers = await set_timers(on_c, token, 0.02, 0.04)  # the reminder in 1.2 s, alert in 2.4 s
    assert await asyncio.to_thread(c.stop) == 0

    reminder = only(await tracked.expect("checkInReminder", timeout=3))
    assert reminder == {
        "sessionToken": token,
        "reminderTimeEnd": timers["reminderTimeEnd"],
        "alertTimeEnd": timers["alertTimeEnd"],
    }
    missed = only(await tracker.expect("checkInMissed", timeout=3))
    assert missed == {"sessionToken": token, "timestamp": timers["alertTimeEnd"]}
    await tracked.expect_none("checkInReminder", within=0.3)


async def test_a_session_is_served_by_another_instance_after_a_clean_stop(
    cluster: Cluster, node: NodeDriver, redis: aioredis.Redis
) -> None:
    a, b = await cluster(2)
    tracked = await node.connect(a.url, "websocket")
    tracker = await node.connect(b.url, "websocket")
    code, _ = await register(tracked)
    token = await track_on(tracked, tracker, code)
    await check_in(tracked, token)
    await tracker.expect("checkInReceived")
    assert (await stored_record(redis, token))["trackedSocketId"] == tracked.sid

    assert await asyncio.to_thread(a.stop) == 0  # SIGTERM: drains, then exits
    assert await tracked.wait_disconnect() == "transport close"
    assert (await stored_record(redis, token))["trackedSocketId"] is None
    # A clean stop leaves the live set at once: only B's heartbeat is left.
    assert await redis.zrange("instances", 0, -1) == [instance_of(tracker)]

    back = await node.connect(b.url, "websocket")
    back.emit("reconnectSession", {"sessionToken": token, "role": "tracked"})
    assert only(await back.expect("sessionReconnected")) == {
        "sessionToken": token,
        "role": "tracked",
    }
    confirmed = await check_in(back, token)
    assert only(await tracker.expect("checkInReceived")) == {
        "sessionToken": token,
        "timestamp": confirmed,
    }
    record = await stored_record(redis, token)
    assert record["trackedSocketId"] == back.sid
    assert instance_of(back) == instance_of(tracker) != instance_of(tracked)
    assert record["trackerSocketIds"] == [tracker.sid]
    assert record["lastCheckIn"] == confirmed
