"""Sessions in Redis: they survive a server restart, are stored the way the Node server stored
them (``session:<token>``, JSON with the Node field names, 30-day expiry renewed on write), and
a record that the Node server wrote is served as it is."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.checkins import stored_record
from tests.support.flows import (
    SESSION_TTL_S,
    check_in,
    eventually,
    now_ms,
    only,
    pair,
    rejoin_as_tracker,
    unknown_token,
)

pytestmark = pytest.mark.node

NODE_FIELDS = {
    "trackedSocketId",
    "trackerSocketIds",
    "lastCheckIn",
    "reminderTimeMinutes",
    "alertTimeMinutes",
    "reminderTimeEnd",
    "alertTimeEnd",
    "settingsConfigured",
}


@pytest.fixture
async def redis_backed_server(start_server, redis_url):
    return await start_server(redis_url=redis_url)


async def eventually_stored(redis, token, predicate) -> dict:
    """The record once ``predicate(record)`` holds (the server saves asynchronously)."""
    return await eventually(lambda: stored_record(redis, token), predicate)


async def test_a_session_survives_a_server_restart(redis_backed_server, node, transport, redis):
    server = redis_backed_server
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    await eventually_stored(redis, p.token, lambda r: r["lastCheckIn"] == last)

    server.stop()
    await server.restart()
    await rejoin_as_tracker(node, server.url, transport, p.token, last)


async def test_after_a_restart_the_tracked_person_reconnects_and_checks_in(
    redis_backed_server, node, transport, redis
):
    server = redis_backed_server
    p = await pair(node, server.url, transport)
    before = await check_in(p.tracked, p.token)
    await eventually_stored(redis, p.token, lambda r: r["lastCheckIn"] == before)

    await server.restart()
    tracked = await node.connect(server.url, transport)
    tracker = await node.connect(server.url, transport)
    tracker.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})
    await tracker.expect("sessionReconnected")
    assert only(await tracker.expect("checkInReceived"))["timestamp"] == before
    tracked.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})
    await tracked.expect("sessionReconnected")

    last = await check_in(tracked, p.token)

    assert only(await tracker.expect("checkInReceived"))["timestamp"] == last


async def test_a_session_is_stored_as_node_json_under_session_token(
    redis_backed_server, node, transport, redis
):
    p = await pair(node, redis_backed_server.url, transport)
    last = await check_in(p.tracked, p.token)

    record = await eventually_stored(redis, p.token, lambda r: r.get("lastCheckIn") == last)

    assert NODE_FIELDS <= record.keys()
    assert isinstance(record["trackedSocketId"], str)
    assert isinstance(record["trackerSocketIds"], list) and len(record["trackerSocketIds"]) == 1
    assert all(isinstance(sid, str) for sid in record["trackerSocketIds"])
    assert record["settingsConfigured"] is False
    for field in ("reminderTimeMinutes", "alertTimeMinutes", "reminderTimeEnd", "alertTimeEnd"):
        assert record[field] is None, (field, record)
    ttl = await redis.ttl(f"session:{p.token}")
    assert SESSION_TTL_S - 60 <= ttl <= SESSION_TTL_S


async def test_timers_are_stored_with_the_node_field_names(
    redis_backed_server, node, transport, redis
):
    p = await pair(node, redis_backed_server.url, transport)
    last = await check_in(p.tracked, p.token)

    p.tracked.emit(
        "setTimers", {"sessionToken": p.token, "reminderTimeMinutes": 15, "alertTimeMinutes": 45}
    )
    await p.tracked.expect("timersSet")

    record = await eventually_stored(redis, p.token, lambda r: r.get("settingsConfigured"))
    assert record["reminderTimeMinutes"] == 15
    assert record["alertTimeMinutes"] == 45
    assert record["reminderTimeEnd"] == last + 15 * 60_000
    assert record["alertTimeEnd"] == last + 45 * 60_000
    assert record["lastCheckIn"] == last


async def test_every_write_restarts_the_thirty_day_expiry(
    redis_backed_server, node, transport, redis
):
    p = await pair(node, redis_backed_server.url, transport)
    key = f"session:{p.token}"
    await eventually_stored(redis, p.token, lambda r: True)
    await redis.expire(key, 100)

    await check_in(p.tracked, p.token)

    ttl = await eventually(lambda: redis.ttl(key), lambda ttl: ttl > 100)
    assert SESSION_TTL_S - 60 <= ttl <= SESSION_TTL_S


def node_record(**fields) -> str:
    """A session record exactly as the Node server wrote it (JSON.stringify)."""
    record = {
        "trackedSocketId": "Xk3vL9qPz_AAAB",
        "trackerSocketIds": ["Qm1oPz8yT_AAAC", "Rt5uWw2eN_AAAD"],
        "lastCheckIn": None,
        "reminderTimeMinutes": None,
        "alertTimeMinutes": None,
        "reminderTimeEnd": None,
        "alertTimeEnd": None,
        "settingsConfigured": False,
    }
    record.update(fields)
    return json.dumps(record, separators=(",", ":"))


async def test_a_record_written_by_the_node_server_is_served(
    redis_backed_server, node, transport, redis
):
    token = unknown_token()
    last = now_ms() - 60_000
    await redis.set(
        f"session:{token}",
        node_record(
            lastCheckIn=last,
            reminderTimeMinutes=60,
            alertTimeMinutes=120,
            reminderTimeEnd=last + 3_600_000,
            alertTimeEnd=last + 7_200_000,
            settingsConfigured=True,
        ),
        ex=SESSION_TTL_S,
    )
    tracker = await node.connect(redis_backed_server.url, transport)

    tracker.emit("reconnectSession", {"sessionToken": token, "role": "tracker"})

    assert only(await tracker.expect("sessionReconnected")) == {
        "sessionToken": token,
        "role": "tracker",
    }
    assert only(await tracker.expect("checkInReceived")) == {
        "sessionToken": token,
        "timestamp": last,
    }
    tracker.emit("getStatus", {"sessionToken": token})
    assert only(await tracker.expect("statusUpdate")) == {
        "sessionToken": token,
        "lastCheckIn": last,
        "alertExpired": False,
    }
    # Once the server has saved the record, the stale socket ids of the old process are gone.
    record = await eventually_stored(
        redis, token, lambda r: "Qm1oPz8yT_AAAC" not in r["trackerSocketIds"]
    )
    assert record["trackedSocketId"] is None
    assert len(record["trackerSocketIds"]) == 1
    assert not {"Qm1oPz8yT_AAAC", "Rt5uWw2eN_AAAD"} & set(record["trackerSocketIds"])
    assert record["lastCheckIn"] == last
    assert record["settingsConfigured"] is True


async def test_the_tracked_person_can_resume_a_node_record_and_check_in(
    redis_backed_server, node, transport, redis
):
    token = unknown_token()
    await redis.set(f"session:{token}", node_record(), ex=SESSION_TTL_S)
    tracked = await node.connect(redis_backed_server.url, transport)
    tracked.emit("reconnectSession", {"sessionToken": token, "role": "tracked"})
    await tracked.expect("sessionReconnected")

    last = await check_in(tracked, token)

    record = await eventually_stored(redis, token, lambda r: r["lastCheckIn"] == last)
    assert record["trackerSocketIds"] == []
    assert record["trackedSocketId"] not in (None, "Xk3vL9qPz_AAAB")


async def test_a_session_survives_a_redis_restart_with_append_only_file(
    make_redis_server, start_server, node, transport
):
    redis_server = make_redis_server(appendonly=True)
    server = await start_server(redis_url=redis_server.url)
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    await asyncio.sleep(0.2)
    server.stop()
    redis_server.stop()

    redis_server.start()
    await server.restart()
    tracker = await node.connect(server.url, transport)
    tracker.emit("getStatus", {"sessionToken": p.token})

    assert only(await tracker.expect("statusUpdate"))["lastCheckIn"] == last
