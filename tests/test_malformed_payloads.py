"""Beyond: every malformed payload of every client event is answered with exactly one `error`
event carrying a clear message, changes nothing, and the server keeps serving.

Each test pairs a real session (timers set, one check-in) and then sends a whole table of bad
payloads for one event with the real Node client. Every payload is sent with an ack callback:
the server acks after its handler returned, and the ack travels behind whatever the handler
emitted on the same socket, so the events between the send and the ack are exactly what that
one payload caused. The apps send no ack; the handler receives the same arguments either way.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from server import errors
from tests.support.flows import (
    Pairing,
    check_in,
    new_code,
    only,
    pair,
    register,
    track,
    unknown_token,
)
from tests.support.nodeclient import NodeClient, NodeDriver
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.node

# The Node server's own strings (PROTOCOL.md): part of the wire contract.
INVALID_SESSION = "Invalid session token"
INVALID_ROLE = "Invalid role"
INVALID_OR_EXPIRED_CODE = "Invalid or expired code"

NO_ARGUMENT = object()  # the event is sent without any payload at all
TEN_KB = "x" * 10_240
NESTED: dict[str, Any] = {"a": {"b": {"c": {"d": [1, {"e": None}], "f": {}}}}}
DEEP_10: Any = "123456"
for _ in range(10):
    DEEP_10 = {"code": DEEP_10}


def bad_tokens(token: str) -> list[tuple[str, Any]]:
    """Strings and other values in the place of a session token, none of them well-formed."""
    return [
        ("null token", None),
        ("number token", 123),
        ("boolean token", True),
        ("array token", [token]),
        ("object token", {"sessionToken": token}),
        ("empty token", ""),
        ("63 chars", token[:-1]),
        ("65 chars", token + "a"),
        ("uppercase hex", token.upper()),
        ("non-hex", "g" * 64),
        ("leading space", " " + token[1:]),
        ("trailing newline", token[:-1] + "\n"),
        ("10 KB token", "a" * 10_240),
    ]


def non_objects(token: str) -> list[tuple[str, list[Any]]]:
    """Payloads that are not an object at all."""
    return [
        ("no argument", []),
        ("null", [None]),
        ("zero", [0]),
        ("number", [123456]),
        ("float", [3.5]),
        ("true", [True]),
        ("false", [False]),
        ("empty array", [[]]),
        ("array", [[token, "tracker"]]),
        ("empty string", [""]),
        ("bare token", [token]),
        ("10 KB string", [TEN_KB]),
    ]


# ------------------------------------------------------------------------- tables
# Each row: (label, args sent, expected error message). args == [] sends no payload.

Row = tuple[str, list[Any], str]


def code_rows(wrong_code: str) -> list[Row]:
    """registerCode and trackCode: anything but a string of 6 digits (100000-999999)."""
    values: list[tuple[str, list[Any]]] = [
        ("no argument", []),
        ("null", [None]),
        ("number", [123456]),
        ("zero", [0]),
        ("negative", [-123456]),
        ("float", [123456.5]),
        ("true", [True]),
        ("false", [False]),
        ("empty array", [[]]),
        ("array with a code", [["123456"]]),
        ("empty object", [{}]),
        ("object with a code", [{"code": "123456"}]),
        ("nested object", [NESTED]),
        ("10 levels deep", [DEEP_10]),
        ("empty string", [""]),
        ("5 digits", ["12345"]),
        ("7 digits", ["1234567"]),
        ("letters", ["12a456"]),
        ("all letters", ["abcdef"]),
        ("leading space", [" 123456"]),
        ("trailing space", ["123456 "]),
        ("trailing newline", ["123456\n"]),
        ("leading zero", ["012345"]),
        ("non-ASCII digits", ["١٢٣٤٥٦"]),
        ("sign", ["+12345"]),
        ("exponent", ["1e5000"]),
        ("10 KB string", [TEN_KB]),
        ("10 KB of digits", ["1" * 10_240]),
        ("first argument null, second a code", [None, wrong_code]),
    ]
    return [(label, args, errors.INVALID_CODE) for label, args in values]


def register_code_rows(token: str) -> list[Row]:
    return code_rows(new_code())


def track_code_rows(token: str) -> list[Row]:
    # Six digits are what a person typed: no such live code gets the Node server's words.
    six_digits = [
        ("unknown code", [new_code()], INVALID_OR_EXPIRED_CODE),
        ("leading zero", ["012345"], INVALID_OR_EXPIRED_CODE),
        ("all zeros", ["000000"], INVALID_OR_EXPIRED_CODE),
    ]
    return [row for row in code_rows(new_code()) if row[0] != "leading zero"] + six_digits


def reconnect_rows(token: str) -> list[Row]:
    not_object = errors.invalid_payload("reconnectSession", "{sessionToken, role}")
    rows: list[Row] = [(label, args, not_object) for label, args in non_objects(token)]
    rows += [
        ("empty object", [{}], INVALID_SESSION),
        ("role only", [{"role": "tracker"}], INVALID_SESSION),
        ("nested object", [NESTED], INVALID_SESSION),
    ]
    rows += [
        (label, [{"sessionToken": bad, "role": "tracker"}], INVALID_SESSION)
        for label, bad in bad_tokens(token)
    ]
    for label, role in [
        ("no role", NO_ARGUMENT),
        ("null role", None),
        ("number role", 1),
        ("boolean role", True),
        ("array role", ["tracker"]),
        ("object role", {"role": "tracker"}),
        ("empty role", ""),
        ("admin", "admin"),
        ("capitalised role", "Tracker"),
        ("role with space", "tracker "),
        ("10 KB role", TEN_KB),
    ]:
        payload = {"sessionToken": token}
        if role is not NO_ARGUMENT:
            payload["role"] = role
        rows.append((label, [payload], INVALID_ROLE))
    rows += [
        ("unknown token, role admin", [{"sessionToken": unknown_token(), "role": "admin"}],
         INVALID_SESSION),
        ("unknown token, role tracker", [{"sessionToken": unknown_token(), "role": "tracker"}],
         INVALID_SESSION),
    ]  # fmt: skip
    return rows


def check_in_rows(token: str) -> list[Row]:
    values: list[tuple[str, list[Any]]] = [(label, args) for label, args in non_objects(token)]
    values = [(label, args) for label, args in values if label != "bare token"]
    values += [
        ("empty object", [{}]),
        ("object with another key", [{"token": token}]),
        ("nested object", [NESTED]),
        ("first argument null, second the token", [None, token]),
    ]
    values += [(label, [bad]) for label, bad in bad_tokens(token) if label != "object token"]
    values += [(f"object, {label}", [{"sessionToken": bad}]) for label, bad in bad_tokens(token)]
    values += [("unknown token", [unknown_token()])]
    return [(label, args, INVALID_SESSION) for label, args in values]


def set_timers_rows(token: str) -> list[Row]:
    not_object = errors.invalid_payload(
        "setTimers", "{sessionToken, reminderTimeMinutes, alertTimeMinutes}"
    )
    rows: list[Row] = [(label, args, not_object) for label, args in non_objects(token)]
    rows += [
        ("empty object", [{}], INVALID_SESSION),
        ("minutes only", [{"reminderTimeMinutes": 5, "alertTimeMinutes": 10}], INVALID_SESSION),
        ("nested object", [NESTED], INVALID_SESSION),
    ]
    rows += [
        (label, [{"sessionToken": bad, "reminderTimeMinutes": 5, "alertTimeMinutes": 10}],
         INVALID_SESSION)
        for label, bad in bad_tokens(token)
    ]  # fmt: skip
    bad_minutes: list[tuple[str, Any]] = [
        ("string", "5"),
        ("empty string", ""),
        ("negative", -5),
        ("negative fraction", -0.5),
        ("zero", 0),
        ("float zero", 0.0),
        ("huge", 1e308),
        ("above 30 days", 43_201),
        ("null", None),
        ("true", True),
        ("array", [5]),
        ("object", {"minutes": 5}),
        ("10 KB string", TEN_KB),
    ]
    for label, bad in bad_minutes:
        rows.append(
            (f"reminder {label}",
             [{"sessionToken": token, "reminderTimeMinutes": bad, "alertTimeMinutes": 10}],
             errors.INVALID_TIMERS)
        )  # fmt: skip
        rows.append(
            (f"alert {label}",
             [{"sessionToken": token, "reminderTimeMinutes": 5, "alertTimeMinutes": bad}],
             errors.INVALID_TIMERS)
        )  # fmt: skip
    rows += [
        ("no minutes", [{"sessionToken": token}], errors.INVALID_TIMERS),
        ("no alert", [{"sessionToken": token, "reminderTimeMinutes": 5}], errors.INVALID_TIMERS),
        ("no reminder", [{"sessionToken": token, "alertTimeMinutes": 10}], errors.INVALID_TIMERS),
        ("both huge",
         [{"sessionToken": token, "reminderTimeMinutes": 1e308, "alertTimeMinutes": 1e308}],
         errors.INVALID_TIMERS),
        ("unknown token",
         [{"sessionToken": unknown_token(), "reminderTimeMinutes": 5, "alertTimeMinutes": 10}],
         INVALID_SESSION),
    ]  # fmt: skip
    return rows


def get_status_rows(token: str) -> list[Row]:
    not_object = errors.invalid_payload("getStatus", "{sessionToken}")
    rows: list[Row] = [(label, args, not_object) for label, args in non_objects(token)]
    rows += [
        ("empty object", [{}], INVALID_SESSION),
        ("object with another key", [{"token": token}], INVALID_SESSION),
        ("nested object", [NESTED], INVALID_SESSION),
    ]
    rows += [(label, [{"sessionToken": bad}], INVALID_SESSION) for label, bad in bad_tokens(token)]
    rows += [("unknown token", [{"sessionToken": unknown_token()}], INVALID_SESSION)]
    return rows


TABLES: dict[str, Callable[[str], list[Row]]] = {
    "registerCode": register_code_rows,
    "trackCode": track_code_rows,
    "reconnectSession": reconnect_rows,
    "checkIn": check_in_rows,
    "setTimers": set_timers_rows,
    "getStatus": get_status_rows,
}


# ------------------------------------------------------------------------ fixtures


@dataclass
class Setup:
    server: ServerProcess
    node: NodeDriver
    transport: str
    pairing: Pairing
    last_check_in: int
    redis: aioredis.Redis

    @property
    def key(self) -> str:
        return f"session:{self.pairing.token}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)  # bytes: records are compared byte for byte
    yield client
    await client.aclose()


@pytest.fixture
async def setup(start_server, redis_url, redis, node, transport) -> Setup:
    """A Redis-backed server with a real session: paired, timers set, one check-in."""
    server = await start_server(redis_url=redis_url)
    p = await pair(node, server.url, transport)
    p.tracked.emit(
        "setTimers", {"sessionToken": p.token, "reminderTimeMinutes": 60, "alertTimeMinutes": 120}
    )
    await p.tracked.expect("timersSet")
    last = await check_in(p.tracked, p.token)
    await p.tracked.expect("timersSet")
    await p.tracker.expect("checkInReceived")
    raw = await redis.get(f"session:{p.token}")
    assert raw is not None and json.loads(raw)["lastCheckIn"] == last, raw
    return Setup(server, node, transport, p, last, redis)


# ------------------------------------------------------------------------- helpers


async def send(client: NodeClient, event: str, args: list[Any]) -> list[tuple[str, list[Any]]]:
    """Sends ``event`` with ``args`` and returns every event the server answered it with."""
    seen = len(client.log)
    await client.call(event, *args, timeout=5.0)
    return client.log[seen:]


async def snapshot(redis: aioredis.Redis) -> dict[bytes, bytes | None]:
    """Every key in Redis with its value."""
    # Failed code attempts are counted (attempts:<address>:<minute>): that is the point of them.
    keys = sorted([key async for key in redis.scan_iter(count=1000) if b"attempts:" not in key])
    # DUMP serialises any type (the session strings and the deadlines sorted set).
    return {key: await redis.dump(key) for key in keys}


async def assert_table_rejected(s: Setup, event: str, sender: NodeClient) -> None:
    """Sends the whole table for ``event``; every row gets exactly one error and nothing else,
    and afterwards the session is exactly as before."""
    p = s.pairing
    rows = TABLES[event](p.token)
    before = await snapshot(s.redis)
    pttl_before = await s.redis.pttl(s.key)
    others = {c.id: (c, len(c.log)) for c in (p.tracked, p.tracker) if c is not sender}

    problems = []
    for label, args, expected in rows:
        answer = await send(sender, event, args)
        if answer != [("error", [expected])]:
            problems.append(f"{event} {label} ({_short(args)}): expected one error "
                            f"{expected!r}, got {answer!r}")  # fmt: skip
    assert not problems, f"{len(problems)} of {len(rows)} rows failed:\n" + "\n".join(problems)

    # Nobody else heard a thing.
    for client, seen in others.values():
        assert client.log[seen:] == [], (client, client.log[seen:])

    # Redis: the same keys, the record byte for byte, and not even rewritten (no fresh TTL).
    after = await snapshot(s.redis)
    assert after == before
    pttl_after = await s.redis.pttl(s.key)
    assert 0 < pttl_after <= pttl_before, (pttl_before, pttl_after)

    # The server still sees the same session.
    p.tracker.emit("getStatus", {"sessionToken": p.token})
    assert only(await p.tracker.expect("statusUpdate")) == {
        "sessionToken": p.token,
        "lastCheckIn": s.last_check_in,
        "alertExpired": False,
    }
    assert await s.redis.dump(s.key) == before[s.key.encode()]


async def reconnect_sees_last_check_in(s: Setup) -> None:
    tracker = await s.node.connect(s.server.url, s.transport)
    tracker.emit("reconnectSession", {"sessionToken": s.pairing.token, "role": "tracker"})
    assert only(await tracker.expect("sessionReconnected"))["role"] == "tracker"
    assert only(await tracker.expect("checkInReceived")) == {
        "sessionToken": s.pairing.token,
        "timestamp": s.last_check_in,
    }


def assert_server_healthy(server: ServerProcess) -> None:
    assert server.running, f"server exited with {server.returncode}:\n{server.log_tail()}"
    log = server.log_text()
    assert "Traceback" not in log, server.log_tail(80)


def _short(args: list[Any]) -> str:
    text = json.dumps(args)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- tests


async def test_malformed_register_code_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    await assert_table_rejected(s, "registerCode", s.pairing.tracked)
    await reconnect_sees_last_check_in(s)
    # The tracked person's own code is still theirs: registering it again resumes the session.
    _, payload = await register(s.pairing.tracked, s.pairing.code)
    assert payload.get("sessionToken") == s.pairing.token, payload
    assert_server_healthy(s.server)


async def test_malformed_track_code_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    await assert_table_rejected(s, "trackCode", s.pairing.tracker)
    await reconnect_sees_last_check_in(s)
    # The real code still pairs a new tracker with the same session.
    second = await s.node.connect(s.server.url, s.transport)
    assert await track(s.pairing.tracked, second, s.pairing.code) == s.pairing.token
    assert only(await second.expect("checkInReceived"))["timestamp"] == s.last_check_in
    assert_server_healthy(s.server)


async def test_malformed_reconnect_session_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    stranger = await s.node.connect(s.server.url, s.transport)
    await assert_table_rejected(s, "reconnectSession", stranger)
    await reconnect_sees_last_check_in(s)
    assert_server_healthy(s.server)


async def test_malformed_check_in_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    await assert_table_rejected(s, "checkIn", s.pairing.tracked)
    await reconnect_sees_last_check_in(s)
    assert_server_healthy(s.server)


async def test_malformed_set_timers_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    await assert_table_rejected(s, "setTimers", s.pairing.tracked)
    await reconnect_sees_last_check_in(s)
    assert_server_healthy(s.server)


async def test_malformed_get_status_payloads_are_rejected_and_change_nothing(setup):
    s = setup
    await assert_table_rejected(s, "getStatus", s.pairing.tracker)
    await reconnect_sees_last_check_in(s)
    assert_server_healthy(s.server)


async def test_a_payload_over_the_message_limit_does_not_hurt_the_server(
    start_server, redis_url, node, transport
):
    """100 KB against the 16 KB default limit, once for every event, each from a new socket."""
    server = await start_server(redis_url=redis_url)
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)

    for event in TABLES:
        client = await node.connect(server.url, transport)
        if transport == "polling":
            await client.wait_upgrade()

        client.emit(event, "x" * 100_000)

        # The server may drop that connection; if it keeps it, it answers with an error.
        try:
            reason = await client.wait_disconnect(timeout=2.0)
        except AssertionError:
            answers = client.received("error")
            assert len(answers) == 1 and isinstance(answers[0][0], str) and answers[0][0], (
                event,
                client.log,
            )
        else:
            assert reason in {"transport close", "transport error"}, (event, reason)

    # Everyone else is untouched, and a fresh client pairs and checks in.
    assert p.tracked.connected and p.tracker.connected
    p.tracker.emit("getStatus", {"sessionToken": p.token})
    assert only(await p.tracker.expect("statusUpdate"))["lastCheckIn"] == last
    fresh = await pair(node, server.url, transport)
    await check_in(fresh.tracked, fresh.token)
    assert_server_healthy(server)


async def test_a_deeply_nested_payload_does_not_hurt_the_server(
    start_server, redis_url, node, transport
):
    """2,000 levels of arrays are only 4 KB, well under the message limit, but deeper than
    a recursive JSON decoder goes."""
    server = await start_server(redis_url=redis_url)
    p = await pair(node, server.url, transport)
    last = await check_in(p.tracked, p.token)
    deep = "[" * 2_001 + "]" * 2_001
    client = await node.connect(server.url, transport)
    client.emit_json("checkIn", f"[{deep}]")  # one argument: 2,000 arrays around an empty one

    # Either one error event or a dropped connection; never silence, never a crash.
    try:
        await client.wait_disconnect(timeout=2.0)
    except AssertionError:
        answers = client.received("error")
        assert len(answers) == 1 and isinstance(answers[0][0], str) and answers[0][0], client.log

    p.tracker.emit("getStatus", {"sessionToken": p.token})
    assert only(await p.tracker.expect("statusUpdate"))["lastCheckIn"] == last
    fresh = await pair(node, server.url, transport)
    await check_in(fresh.tracked, fresh.token)
    assert_server_healthy(server)


def test_every_client_event_has_a_table():
    assert set(TABLES) == {
        "registerCode", "trackCode", "reconnectSession", "checkIn", "setTimers", "getStatus"
    }  # fmt: skip
    for event, rows in TABLES.items():
        labels = [label for label, _, _ in rows(secrets.token_hex(32))]
        assert len(labels) == len(set(labels)), f"duplicate labels in the {event} table"
