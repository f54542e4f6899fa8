"""Redis restarted empty (no persistence, or flushed) while sessions are armed: the server sees
its data marker gone at the next heartbeat and writes back every session and deadline it holds,
so that alerts still fire and the sessions outlive the next server restart.

Without the write-back nothing notices: redis-py reconnects to the empty Redis silently, no
alert fires (its deadline is gone), and a session nobody touches is lost at the next restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from msgspec.structs import replace
from redis.exceptions import RedisError

from server import keys, rules
from server.alerts import Alerts
from server.events import Events
from server.instances import Instances
from server.models import Session
from server.persistence import RedisStore, connect
from server.store import StoreUnavailable, _encode, decode_record
from tests.support.fakes import MIN, START, FakeClock, FakeSocketIO, armed
from tests.support.flows import (
    check_in,
    eventually,
    now_ms,
    only,
    pair,
    register,
    rejoin_as_tracker,
    track,
)
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import RedisServer

pytestmark = pytest.mark.node

SESSIONS = 4
WRITTEN_BACK_WITHIN_S = 3.0


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def stored(client: aioredis.Redis, tokens: list[str]) -> tuple[int, int]:
    """How many of the sessions' records, and of their deadlines, Redis holds."""
    try:
        records = sum([await client.exists(f"session:{token}") for token in tokens])
        deadlines = await client.zcard("deadlines") + await client.zcard("deadlines:leased")
    except (RedisError, OSError):
        return -1, -1
    return records, deadlines


async def paired_across(
    node: NodeDriver, start_server: Any, redis_server: RedisServer
) -> tuple[Any, Any, NodeClient, NodeClient, str, str]:
    """Instances A and B on `redis_server`: an app on A registers a code, a tracker on B pairs
    it. Returns A, B, the app, the tracker, the code and the session token."""
    a = await start_server(redis_url=redis_server.url)
    b = await start_server(redis_url=redis_server.url)
    tracked = await node.connect(a.url, "websocket")
    code, _ = await register(tracked)
    tracker = await node.connect(b.url, "websocket")
    return a, b, tracked, tracker, code, await track(tracked, tracker, code)


async def exists(client: aioredis.Redis, key: str) -> int:
    """1 when Redis holds `key` (0 while it is away)."""
    try:
        return int(await client.exists(key))
    except (RedisError, OSError):
        return 0


async def code_entry(client: aioredis.Redis, code: str) -> dict[str, Any]:
    """The code's entry in Redis ({} when there is none, or while Redis is away)."""
    try:
        raw = await client.get(f"code:{code}")
    except (RedisError, OSError):
        return {}
    return dict(json.loads(raw)) if raw else {}


async def test_sessions_and_deadlines_come_back_when_redis_restarts_empty(
    start_server, redis_server, redis_client, node
):
    server = await start_server(redis_url=redis_server.url)
    pairs = [await pair(node, server.url, "websocket") for _ in range(SESSIONS)]
    last: dict[str, int] = {}
    for p in pairs:
        last[p.token] = await check_in(p.tracked, p.token)
        # A reminder after 3 s, the alert after 6 s: due after Redis is back.
        p.tracked.emit(
            "setTimers",
            {"sessionToken": p.token, "reminderTimeMinutes": 0.05, "alertTimeMinutes": 0.1},
        )
        only(await p.tracked.expect("timersSet"))
    tokens = [p.token for p in pairs]
    assert await stored(redis_client, tokens) == (SESSIONS, 2 * SESSIONS)
    waiting = await node.connect(server.url, "websocket")  # an app waiting for its tracker
    code, _ = await register(waiting)

    redis_server.kill()  # no persistence: everything it held is gone
    await asyncio.to_thread(redis_server.start)

    # Written back within a few seconds, although no client did anything meanwhile.
    back = await eventually(
        lambda: stored(redis_client, tokens),
        lambda counts: counts[0] == SESSIONS and counts[1] >= SESSIONS,
        within=WRITTEN_BACK_WITHIN_S,
    )
    assert back[0] == SESSIONS, back
    record = json.loads(await redis_client.get(f"session:{tokens[0]}"))
    assert record["lastCheckIn"] == last[tokens[0]] and record["alertTimeMinutes"] == 0.1
    assert await redis_client.ttl(f"session:{tokens[0]}") > 29 * 24 * 3600

    # The line is written once the write-back's reply is read: a moment after Redis holds it.
    async def log_text() -> str:
        return server.log_text()

    await eventually(log_text, lambda text: "Redis lost its data: wrote back" in text)
    # The code of the app still connected here is written back: a tracker can still pair.
    await eventually(
        lambda: redis_client.exists(f"code:{code}"), lambda n: n == 1, within=WRITTEN_BACK_WITHIN_S
    )
    late = await node.connect(server.url, "websocket")
    await track(waiting, late, code)
    assert value(await scrape(server.url), "alliswell_redis_data_lost_total") == 1

    # Every connected tracker hears its missed check-in: the deadlines came back too.
    for p in pairs:
        missed = only(await p.tracker.expect("checkInMissed", timeout=15.0))
        assert missed["sessionToken"] == p.token

    # The sessions outlive a restart of the server (Redis holds them again).
    await asyncio.to_thread(server.stop)
    await server.start()
    for p in pairs:
        await rejoin_as_tracker(node, server.url, "websocket", p.token, last[p.token])


@contextlib.asynccontextmanager
async def two_stores(
    redis_server: RedisServer,
    a_class: type[RedisStore],
    b_class: type[RedisStore],
    clock: FakeClock | None = None,
) -> AsyncIterator[tuple[aioredis.Redis, RedisStore, RedisStore]]:
    """Two instances' stores on one Redis (the server's kind of client), started, and a token."""
    client = connect(redis_server.url, timeout=2, max_connections=4)
    clock = clock if clock is not None else FakeClock()
    a = a_class(clock, client, Instances(clock, client))
    b = b_class(clock, client, Instances(clock, client))
    try:
        for store in (a, b):
            await store.start()
        yield client, a, b
    finally:
        for store in (a, b):
            await store.close()


async def stored_session(client: aioredis.Redis, token: str) -> Session | None:
    raw = await client.get(keys.session(token))
    return decode_record(raw) if raw is not None else None


class NaiveWriteBack(RedisStore):
    """Writes its cached records back over whatever Redis holds by then."""

    async def write_back(self) -> tuple[int, int]:
        for token, session in self._sessions.items():
            await self._redis.set(keys.session(token), _encode(session))
        return len(self._sessions), 0


@pytest.mark.parametrize(
    "store_class",
    [
        RedisStore,
        pytest.param(
            NaiveWriteBack,
            marks=pytest.mark.xfail(strict=True, reason="it overwrites the newer record"),
        ),
    ],
)
async def test_a_write_back_never_overwrites_a_change_made_since_redis_came_back(
    redis_server: RedisServer, store_class: type[RedisStore]
) -> None:
    async with two_stores(redis_server, RedisStore, store_class) as (client, a, b):
        token = secrets.token_hex(32)
        await a.create(token, Session(last_check_in=START))
        assert await b.load(token) is not None  # B caches it too

        redis_server.kill()
        await asyncio.to_thread(redis_server.start)
        # A check-in on A reaches the empty Redis first (its write finds the record gone and
        # writes it again); then B writes back what it held: the older record.
        assert await a.update(token, lambda s: (rules.check_in(s, START + 1000), None))
        await b.write_back()

        record = await stored_session(client, token)
        assert record is not None and record.last_check_in == START + 1000
        cached = b.cached(token)
        assert cached is not None and cached.last_check_in == START + 1000  # B took theirs


class FirstWriteBackWins(RedisStore):
    """Writes its cached records back only where Redis has none (the newest copy may lose)."""

    async def _write_back(self, batch: list[tuple[str, Session]]) -> tuple[int, int]:
        written = 0
        for token, session in batch:
            if await self._redis.set(keys.session(token), _encode(session), nx=True):
                written += 1
        return written, 0


@pytest.mark.parametrize(
    "store_class",
    [
        RedisStore,
        pytest.param(
            FirstWriteBackWins,
            marks=pytest.mark.xfail(strict=True, reason="a stale copy written back first wins"),
        ),
    ],
)
async def test_the_newest_copy_wins_the_write_back_whoever_writes_first(
    redis_server: RedisServer, store_class: type[RedisStore]
) -> None:
    # Found by the chaos run: B read the session once (a tracker paired there), A confirmed a
    # check-in since; Redis restarted empty and B, with its stale copy, wrote back first.
    async with two_stores(redis_server, store_class, store_class) as (client, a, b):
        token = secrets.token_hex(32)
        await a.create(token, Session(last_check_in=START))
        assert await b.load(token) is not None  # B's copy, from before the check-in
        assert await a.update(token, lambda s: (rules.check_in(s, START + 1000), None))

        redis_server.kill()
        await asyncio.to_thread(redis_server.start)
        await b.write_back()
        await a.write_back()

        record = await stored_session(client, token)
        assert record is not None and record.last_check_in == START + 1000


async def test_an_app_that_had_just_left_gets_its_session_back_after_redis_lost_its_data(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run: only the codes of apps connected at the time were written back,
    # so an app that had dropped a moment before re-registered its code and got a fresh,
    # unpaired one (its pairing gone for it). The instance it left from writes that code back.
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "websocket")
    await p.tracked.disconnect()
    await p.tracker.expect("trackedPersonDisconnected")

    redis_server.kill()
    await asyncio.to_thread(redis_server.start)

    await eventually(
        lambda: exists(redis_client, f"code:{p.code}"),
        lambda n: n == 1,
        within=WRITTEN_BACK_WITHIN_S + 2,
    )
    again = await node.connect(server.url, "websocket")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token


async def test_an_app_that_had_just_left_gets_its_session_back_while_redis_is_away(
    node: NodeDriver, start_server: Any, redis_server: RedisServer
) -> None:
    # While Redis is away codes are looked up in this process only: the paired code its app
    # left from here still answers with the session, not as a fresh code.
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "websocket")
    await p.tracked.disconnect()
    await p.tracker.expect("trackedPersonDisconnected")
    redis_server.kill()
    again = await node.connect(server.url, "websocket")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token


async def test_a_change_held_on_a_stale_copy_is_made_on_the_newest_copy_written_back(
    redis_server: RedisServer,
) -> None:
    # Found by the chaos run: A held a setTimers made on its stale copy (no check-in) while
    # Redis was away; B held the newest copy (the check-in). Redis came back empty and each
    # wrote back what it had: the check-in and the timers must both be in Redis at the end.
    async with two_stores(redis_server, RedisStore, RedisStore) as (client, a, b):
        for store in (a, b):
            await store.instances.check()  # each knows Redis's data marker
        token = secrets.token_hex(32)
        await a.create(token, Session())
        assert await b.load(token) is not None
        assert await b.update(token, lambda s: (rules.check_in(s, START + 1000), None))

        redis_server.kill()
        # A's change is held (Redis away), made on its copy from before the check-in.
        assert await a.update(token, lambda s: (rules.set_timers(s, 1, 2, START + 2000), None))
        assert a.held == 1
        await asyncio.to_thread(redis_server.start)
        # Both see the loss: A first (its write-back and recovery done), then B's heartbeat.
        await eventually(a.instances.check, bool, within=5)
        await asyncio.sleep(0.5)
        await eventually(b.instances.check, bool, within=5)

        record = await eventually(
            lambda: stored_session(client, token),
            lambda r: r is not None and r.settings_configured and r.last_check_in is not None,
            within=10,
        )
        assert record is not None and record.last_check_in == START + 1000
        assert record.alert_time_minutes == 2


async def test_a_connected_app_registering_its_code_again_while_redis_is_away_keeps_its_session(
    node: NodeDriver, start_server: Any, redis_server: RedisServer
) -> None:
    # Found by the chaos run: the app's own socket re-registered its paired code during an
    # outage and got a fresh, unpaired one, which a tracker then paired into a second session.
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "websocket")
    redis_server.kill()
    _, reply = await register(p.tracked, p.code)
    assert reply.get("sessionToken") == p.token


def scheduler(store: RedisStore, clock: FakeClock) -> tuple[Alerts, FakeSocketIO]:
    """One instance's alert scheduler, with a tracker of every session in its room."""
    sio = FakeSocketIO()
    events = Events(sio, store, clock, code_grace_ms=MIN)  # type: ignore[arg-type]
    return Alerts(events), sio


def missed(sio: FakeSocketIO, token: str) -> list[Any]:
    return [
        data
        for _, event, data in sio.sent
        if event == "checkInMissed" and data["sessionToken"] == token
    ]


class NoClaimPause(RedisStore):
    """Claims go on while the copies and the held changes are written back."""

    async def write_back(self) -> tuple[int, int]:
        await self._redis.delete(keys.DATA_REBASE)
        written = await super().write_back()
        await self._redis.delete(keys.DATA_REBASE)
        return written


@pytest.mark.parametrize(
    "store_class",
    [
        RedisStore,
        pytest.param(
            NoClaimPause,
            marks=pytest.mark.xfail(strict=True, reason="alerts on the stale copy written back"),
        ),
    ],
)
async def test_no_alert_is_decided_on_a_stale_copy_written_back_after_redis_lost_its_data(
    redis_server: RedisServer, store_class: type[RedisStore]
) -> None:
    # Found by the chaos run (seed 7, every fault): A holds a check-in made while Redis was
    # away; B holds the copy from before it, whose alert is due now. Redis comes back empty and
    # both write back what they last saw (the old deadline with it): that deadline must not
    # fire before A's check-in is in, whichever writes back first.
    clock = FakeClock()
    async with two_stores(redis_server, store_class, store_class, clock) as (client, a, b):
        for store in (a, b):
            await store.instances.check()
        token = secrets.token_hex(32)
        await a.create(token, armed(START + 2 * MIN))
        assert await b.load(token) is not None
        alerts_b, sio_b = scheduler(b, clock)
        await sio_b.enter_room("tracker", f"trackers:{token}")

        redis_server.kill()
        clock.now = at = START + 90_000
        assert await a.update(token, lambda s: (rules.check_in(s, at), None))
        assert a.held == 1  # confirmed to the app, held
        clock.now = START + 3 * MIN  # the old alert is due, the new one (START + 3.5 min) not
        await asyncio.to_thread(redis_server.start)

        # B sees the loss first and writes back (its old deadline with it); A half a second
        # later: B's writes may go first after the pause, A's check-in after.
        await eventually(b.instances.check, bool, within=5)
        await asyncio.sleep(0.5)

        async def settled() -> bool:
            # B's scheduler runs all along, as it would.
            await alerts_b.run_once()
            await asyncio.gather(a.instances.check(), b.instances.check())
            record = await stored_session(client, token)
            return (
                record is not None
                and record.last_check_in == START + 90_000
                and not await client.exists(keys.DATA_REBASE)
            )

        await eventually(settled, bool, within=15)
        assert missed(sio_b, token) == []  # not the alert the check-in moved

        clock.now = START + 4 * MIN
        await alerts_b.run_once()
        assert missed(sio_b, token) == [{"sessionToken": token, "timestamp": START + 210_000}]


async def test_an_instance_holding_changes_decides_no_alert_on_its_own_copy(
    redis_server: RedisServer,
) -> None:
    # Found by the chaos run: after Redis came back, an instance still writing its held changes
    # claimed another instance's new deadline and judged it against its own, older copy (not
    # due: dropped, never pushed), or fired an old deadline from that copy.
    clock = FakeClock()
    async with two_stores(redis_server, RedisStore, RedisStore, clock) as (client, a, b):
        token, other = secrets.token_hex(32), secrets.token_hex(32)
        await a.create(token, armed(START + 2 * MIN))
        await a.create(other, Session())
        assert await b.load(token) is not None and await b.load(other) is not None
        # A moves the alert (B's copy is now stale), then Redis goes away and B holds a change.
        assert await a.update(token, lambda s: (rules.check_in(s, START + MIN), None))
        redis_server.kill()
        assert await b.update(other, lambda s: (rules.check_in(s, START), None))
        assert not b.available and b.held == 1
        await asyncio.to_thread(redis_server.start)
        # Redis answers (empty, as after a restart); A's newer record and deadline are back.
        await client.set(keys.session(token), _encode(armed(START + 3 * MIN)))
        await client.zadd(keys.DEADLINES, {f"alert:{token}": START + 3 * MIN})
        alerts_b, sio_b = scheduler(b, clock)
        await sio_b.enter_room("tracker", f"trackers:{token}")
        clock.now = START + 3 * MIN

        assert await alerts_b.run_once() == 0
        assert missed(sio_b, token) == []
        assert await client.zscore(keys.DEADLINES, f"alert:{token}") == START + 3 * MIN  # kept
        with pytest.raises(StoreUnavailable):
            await b.update(token, lambda s: rules.fire_alert(s, START + 3 * MIN), checked=True)
        assert b.held == 1  # nothing held for it


async def test_an_older_check_in_held_elsewhere_never_undoes_a_newer_one(
    redis_server: RedisServer,
) -> None:
    # Found by the chaos run: B confirmed a check-in while Redis was away; after Redis came
    # back, the app checked in again through A. B's held check-in, made again on A's record,
    # put the last check-in (and the deadlines) back to the older time.
    clock = FakeClock()
    async with two_stores(redis_server, RedisStore, RedisStore, clock) as (client, a, b):
        for store in (a, b):
            await store.instances.check()
        token = secrets.token_hex(32)
        await a.create(token, armed(START + 2 * MIN))
        assert await b.load(token) is not None

        redis_server.kill()
        assert await b.update(token, lambda s: (rules.check_in(s, START + 1_000), None))
        assert b.held == 1
        await asyncio.to_thread(redis_server.start)
        assert await a.update(token, lambda s: (rules.check_in(s, START + 2_000), None))

        await eventually(b.instances.check, bool, within=5)
        await eventually(lambda: asyncio.sleep(0, b.held), lambda held: held == 0, within=10)
        record = await stored_session(client, token)
        assert record is not None and record.last_check_in == START + 2_000
        assert record.alert_time_end == START + 2_000 + 2 * MIN


async def test_an_app_that_left_while_redis_was_away_gets_its_session_back_after_it_lost_its_data(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seed 104): the app dropped while Redis was restarting; the
    # release of its code failed, and the code was forgotten here, so it was not written back
    # and the app's next registration got a fresh, unpaired code.
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "websocket")
    redis_server.kill()
    await p.tracked.disconnect()
    await asyncio.to_thread(redis_server.start)

    await eventually(
        lambda: exists(redis_client, f"code:{p.code}"),
        lambda n: n == 1,
        within=WRITTEN_BACK_WITHIN_S + 2,
    )
    again = await node.connect(server.url, "websocket")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token


async def test_an_app_that_left_while_redis_was_away_gets_its_session_back_on_another_instance(
    node: NodeDriver, start_server: Any, make_redis_server: Any
) -> None:
    # Redis keeps its data (append-only file) through the outage, but the release of the code
    # failed: Redis still named the app's old socket on A, a live instance, as its owner, and
    # the app registering its code on B was told it was in use.
    store = make_redis_server(appendonly=True)
    a = await start_server(store.url)
    b = await start_server(store.url)
    p = await pair(node, a.url, "websocket")
    store.kill()
    await p.tracked.disconnect()
    await asyncio.sleep(0.5)  # A tried to release the code and could not
    store.start()
    for server in (a, b):
        await eventually(
            lambda server=server: scrape(server.url),
            lambda s: value(s, "alliswell_redis_up") == 1,
            within=15,
        )
    await asyncio.sleep(1.5)  # a heartbeat of A's with Redis back
    again = await node.connect(b.url, "websocket")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token


async def test_a_change_held_after_redis_is_back_is_made_on_the_newer_record_there(
    redis_server: RedisServer,
) -> None:
    # Found by the chaos run (seed 201): in the moment after Redis came back empty, while this
    # instance still held its changes (the write-back pause), a tracker rejoined here and was
    # answered from the copy held here, without the check-in another instance had just written.
    clock = FakeClock()
    async with two_stores(redis_server, RedisStore, RedisStore, clock) as (client, a, _):
        await a.instances.check()
        token = secrets.token_hex(32)
        await a.create(token, armed(START + 2 * MIN))
        redis_server.kill()
        assert await a.update(token, lambda s: (rules.set_timers(s, 1, 3, START + 500), None))
        assert a.held == 1
        await asyncio.to_thread(redis_server.start)
        await eventually(a.instances.check, bool, within=5)  # A writes back its copy
        mine = await eventually(
            lambda: stored_session(client, token), lambda r: r is not None, within=5
        )
        assert mine is not None and not a.available  # still holding: the pause
        # Another instance checks in on the record A wrote back (one write more).
        theirs = rules.check_in(mine, START + 5_000)
        await client.set(keys.session(token), _encode(replace(theirs, revision=mine.revision + 1)))

        updated = await a.update(token, lambda s: (s, s.last_check_in))
        assert updated is not None and updated[1] == START + 5_000
        assert updated[0].alert_time_minutes == 3  # and A's held change made on it
        record = await eventually(
            lambda: stored_session(client, token),
            lambda r: r is not None and r.alert_time_minutes == 3,
            within=10,
        )
        assert record is not None and record.last_check_in == START + 5_000


@pytest.mark.parametrize("emptied", [True, False], ids=["restarted-empty", "kept-its-data"])
async def test_a_code_registered_again_while_redis_was_away_outlives_its_instance(
    node: NodeDriver, start_server: Any, make_redis_server: Any, emptied: bool
) -> None:
    # Found by the chaos run (seed 201): the app re-registered its paired code on A while
    # Redis was away (decided in A alone); Redis came back; A was then stopped, and the app,
    # now on B, got a fresh code: A had never handed its decision to Redis.
    store = make_redis_server(appendonly=not emptied)
    a = await start_server(store.url)
    b = await start_server(store.url)
    p = await pair(node, a.url, "websocket")
    store.kill()
    await p.tracked.disconnect()
    again = await node.connect(a.url, "websocket")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token  # from A's memory
    store.start()
    client = aioredis.from_url(store.url)

    try:
        await eventually(
            lambda: code_entry(client, p.code),
            lambda entry: entry.get("tracked_sid") == again.sid,
            within=10,
        )
    finally:
        await client.aclose()
    await again.disconnect()
    await asyncio.to_thread(a.stop)
    last = await node.connect(b.url, "websocket")
    _, reply = await register(last, p.code)
    assert reply.get("sessionToken") == p.token


async def test_a_crash_after_redis_lost_its_data_is_still_told(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seeds 208, 211): where each instance's sockets are bound was
    # lost with Redis's data, so when that instance went away afterwards its sessions kept
    # naming its sockets and nobody was told. Each instance writes its bindings back too.
    a, _, tracked, tracker, _code, token = await paired_across(node, start_server, redis_server)
    assert tracked.sid is not None
    bindings = f"instance-sessions:{tracked.sid.split('.')[0]}"

    redis_server.kill()
    await asyncio.to_thread(redis_server.start)

    await eventually(
        lambda: exists(redis_client, bindings), lambda n: n == 1, within=WRITTEN_BACK_WITHIN_S + 2
    )
    a.kill()
    assert await tracker.expect("trackedPersonDisconnected", timeout=12) == []
    record = await eventually(
        lambda: stored_session(redis_client, token),
        lambda r: r is not None and r.tracked_socket_id is None,
        within=5,
    )
    assert record is not None


async def test_the_tracked_app_gets_its_session_back_with_its_code_once_the_code_was_lost(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seed 212): the instance holding the app's paired code was killed,
    # then Redis restarted empty: nobody could write the code back, and the app, back with its
    # token, registered its code and got a fresh, unpaired one. The record names its code.
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, "websocket")
    await p.tracked.disconnect()
    await p.tracker.expect("trackedPersonDisconnected")
    await redis_client.delete(f"code:{p.code}", f"code-of:{p.token}")  # lost

    stranger = await node.connect(server.url, "websocket")
    _, reply = await register(stranger, p.code)
    assert "sessionToken" not in reply  # a free code: nobody's session without the token
    await stranger.disconnect()
    await redis_client.delete(f"code:{p.code}")

    again = await node.connect(server.url, "websocket")
    again.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})
    await again.expect("sessionReconnected")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token
    second = await node.connect(server.url, "websocket")
    assert await track(again, second, p.code) == p.token  # and trackers join it again


async def test_a_code_paired_on_another_instance_comes_back_paired_after_redis_lost_its_data(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seed 214): the app's instance knew its code only as pending (the
    # tracker paired it through another instance) and wrote it back so; the next tracker then
    # made a second session of it, and the first kept naming the app's socket after it left.
    # The instance holding the session writes the code back paired (the record names it).
    _, b, tracked, tracker, code, token = await paired_across(node, start_server, redis_server)

    redis_server.kill()
    await asyncio.to_thread(redis_server.start)

    async def paired_to() -> object:
        return (await code_entry(redis_client, code)).get("session_token")

    await eventually(paired_to, lambda t: t == token, within=WRITTEN_BACK_WITHIN_S + 2)
    await asyncio.sleep(1)  # and it stays so, whichever instance wrote last
    assert await paired_to() == token
    second = await node.connect(b.url, "websocket")
    assert await track(tracked, second, code) == token  # one session, as before
    await tracked.disconnect()
    await tracker.expect("trackedPersonDisconnected")


async def test_the_tracked_app_takes_its_code_back_from_a_socket_that_left_unnoticed(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seeds 314, 316): the app's socket on A left while Redis restarted
    # empty; the code came back naming it (A alive), and the app's next sockets, on B, were
    # told the code was in use. With its token, the app takes its code back.
    a = await start_server(redis_url=redis_server.url)
    b = await start_server(redis_url=redis_server.url)
    p = await pair(node, a.url, "websocket")
    raw = await redis_client.get(f"code:{p.code}")
    assert raw is not None and p.tracked.sid is not None
    ghost = p.tracked.sid.split(".")[0] + ".gone-unnoticed"
    await redis_client.set(f"code:{p.code}", json.dumps({**json.loads(raw), "tracked_sid": ghost}))
    await redis_client.delete(f"code-of:{p.token}")  # as written back, before it was paired
    await p.tracked.disconnect()

    again = await node.connect(b.url, "websocket")
    again.emit("registerCode", p.code)  # without its token: in use, as for anyone
    assert only(await again.expect("error")) == "Code already in use. Generating new code..."
    again.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})
    await again.expect("sessionReconnected")
    _, reply = await register(again, p.code)
    assert reply.get("sessionToken") == p.token


async def test_trackers_hear_that_the_tracked_app_left_while_redis_was_away(
    node: NodeDriver, start_server: Any, make_redis_server: Any
) -> None:
    # Found by the chaos run (seed 314): the tracked app's instance knew of its pairing (made
    # through another instance) only from Redis; the app left while Redis was away, so the
    # record kept naming its socket (the instance alive) and nobody was told.
    store = make_redis_server(appendonly=True)
    a = await start_server(store.url)
    b = await start_server(store.url)
    tracked = await node.connect(a.url, "websocket")
    code, _ = await register(tracked)
    tracker = await node.connect(b.url, "websocket")
    token = await track(tracked, tracker, code)
    store.kill()
    await tracked.disconnect()
    await asyncio.sleep(0.5)
    store.start()
    assert await tracker.expect("trackedPersonDisconnected", timeout=10) == []
    client = aioredis.from_url(store.url)
    try:
        record = await eventually(
            lambda: stored_session(client, token),
            lambda r: r is not None and r.tracked_socket_id is None,
            within=5,
        )
    finally:
        await client.aclose()
    assert record is not None


async def test_a_tracker_pairing_while_redis_is_away_joins_the_session_made_elsewhere(
    node: NodeDriver, start_server: Any, redis_server: RedisServer
) -> None:
    # Found by the chaos run (seed 407): A knew its app's code only as pending (a tracker had
    # paired it through B); while Redis was away a second tracker entered it on A, which made
    # a second session of it. A record held here that names the code says it is paired.
    a = await start_server(redis_url=redis_server.url)
    b = await start_server(redis_url=redis_server.url)
    tracked = await node.connect(a.url, "websocket")
    code, _ = await register(tracked)
    first = await node.connect(b.url, "websocket")
    token = await track(tracked, first, code)
    await check_in(tracked, token)  # A holds the record now
    redis_server.kill()
    second = await node.connect(a.url, "websocket")
    assert await track(tracked, second, code) == token  # one session, not two


async def test_the_connected_app_keeps_its_code_whoever_writes_it_back_first(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seed 412): B (holding the session) wrote the code back first,
    # paired but with no owner (it cannot know the app's socket); A's write-back of its app's
    # code then found it taken, and the app, connected all along, was told its own code was
    # in use. The app's instance puts its socket back as the owner.
    _, _, tracked, _tracker, code, token = await paired_across(node, start_server, redis_server)
    redis_server.kill()
    await asyncio.to_thread(redis_server.start)
    # B first, as it writes it from its record (before either heartbeat sees the loss).
    written_by_b = {"code": code, "tracked_sid": None, "expires_at": now_ms() + 300_000}
    written_by_b |= {"session_token": token, "left_at": now_ms(), "address": None}
    await redis_client.set(f"code:{code}", json.dumps(written_by_b))

    async def owner() -> object:
        entry = await code_entry(redis_client, code)
        return entry.get("tracked_sid"), entry.get("session_token")

    await eventually(owner, lambda o: o == (tracked.sid, token), within=WRITTEN_BACK_WITHIN_S + 2)
    await eventually(
        lambda: stored_session(redis_client, token),
        lambda r: r is not None,
        within=WRITTEN_BACK_WITHIN_S,
    )
    _, reply = await register(tracked, code)
    assert reply.get("sessionToken") == token


async def test_an_app_that_left_before_its_pairing_gets_it_from_a_code_written_back(
    node: NodeDriver, start_server: Any, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Found by the chaos run (seed 418): the app left while its code was pending; a tracker
    # paired it through B; Redis restarted empty and B wrote the code back from its record,
    # without the app's address, so the app (which never heard its token) was told its own code
    # was in use. The record keeps the address the code was registered from.
    a = await start_server(redis_url=redis_server.url)
    b = await start_server(redis_url=redis_server.url)
    tracked = await node.connect(a.url, "websocket")
    code, _ = await register(tracked)
    await tracked.disconnect()
    tracker = await node.connect(b.url, "websocket")
    tracker.emit("trackCode", code)
    token = only(await tracker.expect("trackingStarted"))["sessionToken"]
    redis_server.kill()
    await asyncio.to_thread(redis_server.start)

    async def paired_to() -> object:
        return (await code_entry(redis_client, code)).get("session_token")

    await eventually(paired_to, lambda t: t == token, within=WRITTEN_BACK_WITHIN_S + 2)
    again = await node.connect(a.url, "websocket")
    _, reply = await register(again, code)
    assert reply.get("sessionToken") == token
