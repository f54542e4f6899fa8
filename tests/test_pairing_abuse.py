"""Pairing against hostile clients, with the real socket.io-client and a real Redis: a code gives
its session to nobody but its own app, nobody squats the code space, roles and trackers are
bounded, and the attempt limit holds under concurrency. "Another address" is another
X-Forwarded-For behind TRUST_PROXY."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis import asyncio as aioredis

from tests.support.flows import (
    check_in,
    expect_error,
    new_code,
    only,
    pair,
    register,
    track,
)
from tests.support.metrics import scrape, value
from tests.support.nodeclient import NodeClient, NodeDriver

IN_USE = "Code already in use. Generating new code..."
INVALID = "Invalid or expired code"
TOO_MANY = "Too many attempts. Try again later."
TOO_MANY_CODES = "Too many codes registered. Use the code you have, or try again later."
TOO_MANY_TRACKERS = "Too many trackers for this session"
NOT_THE_TRACKED = "Not allowed: this connection is a tracker of the session"
NOT_A_TRACKER = "Not allowed: this connection is the tracked person of the session"
HOME = "203.0.113.10"  # the tracked app's network
STRANGER = "198.51.100.66"


def at(address: str) -> dict[str, Any]:
    return {"extraHeaders": {"X-Forwarded-For": address}}


async def early_in_a_minute() -> None:
    """The limits count per minute of the clock: start a counting test where the window
    cannot turn over under it."""
    left = 60 - time.time() % 60
    if left < 25:
        await asyncio.sleep(left + 0.2)


async def refusals(url: str, quota: str) -> float:
    return value(await scrape(url), "alliswell_refusals_total", quota=quota)


# --- a code's session goes to its own app only -------------------------------------------


async def test_a_dropped_apps_paired_code_gives_no_token_to_another_address(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    tracked = await node.connect(server.url, "websocket", **at(HOME))
    tracker = await node.connect(server.url, "websocket", **at("192.0.2.77"))
    code, _ = await register(tracked)
    token = await track(tracked, tracker, code)
    await tracked.kill_transport()  # the phone lost its connection
    await tracker.expect("trackedPersonDisconnected")

    stranger = await node.connect(server.url, "websocket", **at(STRANGER))
    stranger.emit("registerCode", code)
    await expect_error(stranger, IN_USE)
    assert stranger.received("codeRegistered") == []

    # The app itself, back on its network with a new socket, resumes its pairing.
    again = await node.connect(server.url, "websocket", **at(HOME))
    _, reply = await register(again, code)
    assert reply["sessionToken"] == token
    confirmed = await check_in(again, token)
    assert only(await tracker.expect("checkInReceived"))["timestamp"] == confirmed


async def test_a_pending_code_whose_owner_left_goes_back_only_to_its_address(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    owner = await node.connect(server.url, "websocket", **at(HOME))
    code, _ = await register(owner)
    await owner.kill_transport()

    stranger = await node.connect(server.url, "websocket", **at(STRANGER))
    stranger.emit("registerCode", code)
    await expect_error(stranger, IN_USE)
    again = await node.connect(server.url, "websocket", **at(HOME))
    _, reply = await register(again, code)
    assert reply["code"] == code and "sessionToken" not in reply
    # And it is the new socket's code now: the tracker's arrival is told to it.
    tracker = await node.connect(server.url, "websocket", **at(STRANGER))
    await track(again, tracker, code)


async def test_an_app_that_resumed_with_its_token_elsewhere_keeps_its_code_from_there(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    tracked = await node.connect(server.url, "websocket", **at(HOME))
    tracker = await node.connect(server.url, "websocket", **at(STRANGER))
    code, _ = await register(tracked)
    token = await track(tracked, tracker, code)
    await tracked.kill_transport()
    # On mobile data now: the token proves it is the app, and the code follows it.
    mobile = await node.connect(server.url, "websocket", **at("192.0.2.200"))
    mobile.emit("reconnectSession", {"sessionToken": token, "role": "tracked"})
    await mobile.expect("sessionReconnected")
    await mobile.kill_transport()
    again = await node.connect(server.url, "websocket", **at("192.0.2.200"))
    assert (await register(again, code))[1]["sessionToken"] == token


async def test_past_the_attempt_limit_every_claim_of_a_held_code_is_refused(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    await early_in_a_minute()
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    owner = await node.connect(server.url, "websocket", **at(HOME))
    codes = [(await register(owner))[0] for _ in range(2)]
    await owner.kill_transport()

    stranger = await node.connect(server.url, "websocket", **at(STRANGER))
    answers = []
    for n in range(11):
        stranger.emit("registerCode", codes[n % 2])
        answers.append(only(await stranger.expect("error")))
    assert answers == [IN_USE] * 10 + [TOO_MANY]
    stranger.emit("trackCode", codes[0])
    await expect_error(stranger, TOO_MANY)
    # The owner's address is not the one guessing: its app still gets its code back.
    again = await node.connect(server.url, "websocket", **at(HOME))
    await register(again, codes[1])


# --- no code space to squat --------------------------------------------------------------


async def test_registrations_from_one_address_are_limited_per_minute(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    await early_in_a_minute()
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    sweeper = await node.connect(server.url, "websocket", **at(STRANGER))
    answers = []
    for _ in range(31):
        sweeper.emit("registerCode", new_code())
        answers.append((await answer_next(sweeper))[0])
    assert answers == ["codeRegistered"] * 30 + ["error"]
    assert sweeper.received("error") == [[TOO_MANY]]
    assert await refusals(server.url, "code_registrations_per_minute") == 1
    # Another address registers as usual.
    honest = await node.connect(server.url, "websocket", **at(HOME))
    await register(honest)


async def answer_next(client: NodeClient) -> tuple[str, list[Any]]:
    """The next codeRegistered or error, whichever comes."""
    seen = len(client.log)
    for _ in range(200):
        for name, args in client.log[seen:]:
            if name in ("codeRegistered", "error"):
                return name, args
        await asyncio.sleep(0.02)
    raise AssertionError(f"no answer: {client.log!r}")


async def test_a_socket_keeps_only_its_two_newest_pending_codes(
    node: NodeDriver, start_server: Any, redis: aioredis.Redis, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url)
    app = await node.connect(server.url, "websocket")
    codes = [(await register(app))[0] for _ in range(3)]

    assert await redis.exists(f"code:{codes[0]}") == 0
    assert await redis.exists(f"code:{codes[1]}") == await redis.exists(f"code:{codes[2]}") == 1
    tracker = await node.connect(server.url, "websocket")
    tracker.emit("trackCode", codes[0])
    await expect_error(tracker, INVALID)
    await track(app, tracker, codes[2])
    assert await refusals(server.url, "pending_codes_per_socket") == 1


async def test_an_address_holds_at_most_its_pending_codes_across_instances(
    node: NodeDriver, start_server: Any, redis: aioredis.Redis, redis_url: str
) -> None:
    env = {"TRUST_PROXY": "true", "PENDING_CODES_PER_ADDRESS": "3"}
    a = await start_server(redis_url=redis_url, **env)
    b = await start_server(redis_url=redis_url, **env)
    apps = [await node.connect(s.url, "websocket", **at(STRANGER)) for s in (a, b, a, b)]
    codes = [(await register(app))[0] for app in apps[:3]]
    apps[3].emit("registerCode", new_code())
    await expect_error(apps[3], TOO_MANY_CODES)
    assert await refusals(b.url, "pending_codes_per_address") == 1
    # Another address is not affected.
    await register(await node.connect(b.url, "websocket", **at(HOME)))

    # A code that pairs no longer counts; nor do the codes of a socket that left and expired
    # (not waited for here: five minutes), so the count follows the codes, not the calls.
    tracker = await node.connect(a.url, "websocket", **at(HOME))
    await track(apps[0], tracker, codes[0])
    await register(apps[3])
    assert await redis.zcard(f"pending-codes:{STRANGER}") == 3


async def test_a_sweep_of_the_code_space_finds_no_session(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    """Issue 11's sweep, bounded: one socket registering code after code near a dropped app's
    paired code never gets its token."""
    await early_in_a_minute()
    server = await start_server(redis_url=redis_url, TRUST_PROXY="true")
    tracked = await node.connect(server.url, "websocket", **at(HOME))
    tracker = await node.connect(server.url, "websocket", **at(HOME))
    code, _ = await register(tracked)
    await track(tracked, tracker, code)
    await tracked.kill_transport()
    sweeper = await node.connect(server.url, "websocket", **at(STRANGER))
    start = int(code) - 20
    for guess in range(start, start + 40):
        sweeper.emit("registerCode", str(guess))
        await answer_next(sweeper)
    assert sweeper.received("codeRegistered") != []  # free codes did register, then the limit
    assert all("sessionToken" not in only(args) for args in sweeper.received("codeRegistered"))
    assert [TOO_MANY] in sweeper.received("error")


# --- roles -------------------------------------------------------------------------------


async def test_a_tracker_socket_cannot_act_as_the_tracked_person(
    node: NodeDriver, start_server: Any, transport: str
) -> None:
    server = await start_server()
    p = await pair(node, server.url, transport)
    p.tracker.emit("checkIn", p.token)
    await expect_error(p.tracker, NOT_THE_TRACKED)
    p.tracker.emit(
        "setTimers", {"sessionToken": p.token, "reminderTimeMinutes": 1, "alertTimeMinutes": 2}
    )
    await expect_error(p.tracker, NOT_THE_TRACKED)
    p.tracker.emit("reconnectSession", {"sessionToken": p.token, "role": "tracked"})
    await expect_error(p.tracker, NOT_THE_TRACKED)
    await p.tracked.expect_none("timersSet", within=0.2)
    assert p.tracker.received("checkInReceived") == []
    # The tracked app is still the tracked socket, and still checks in.
    confirmed = await check_in(p.tracked, p.token)
    assert only(await p.tracker.expect("checkInReceived"))["timestamp"] == confirmed
    # A socket bound to nothing may act with the token, as the protocol lets it.
    holder = await node.connect(server.url, transport)
    await check_in(holder, p.token)


async def test_a_tracker_on_the_tracked_apps_network_cannot_take_its_dropped_code(
    node: NodeDriver, start_server: Any
) -> None:
    server = await start_server()  # both on 127.0.0.1: one household
    p = await pair(node, server.url, "websocket")
    await p.tracked.kill_transport()
    await p.tracker.expect("trackedPersonDisconnected")
    p.tracker.emit("registerCode", p.code)
    await expect_error(p.tracker, NOT_THE_TRACKED)
    assert p.tracker.received("codeRegistered") == []
    again = await node.connect(server.url, "websocket")
    assert (await register(again, p.code))[1]["sessionToken"] == p.token


async def test_the_tracked_socket_cannot_track_its_own_session(
    node: NodeDriver, start_server: Any
) -> None:
    server = await start_server()
    p = await pair(node, server.url, "websocket")
    p.tracked.emit("trackCode", p.code)
    await expect_error(p.tracked, NOT_A_TRACKER)
    p.tracked.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})
    await expect_error(p.tracked, NOT_A_TRACKER)
    alone = await node.connect(server.url, "websocket")
    code, _ = await register(alone)
    alone.emit("trackCode", code)
    await expect_error(alone, NOT_A_TRACKER)
    assert p.tracked.received("trackingStarted") == alone.received("trackingStarted") == []


# --- trackers per session ----------------------------------------------------------------


async def test_a_session_takes_at_most_its_trackers(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, TRACKERS_PER_SESSION="2")
    p = await pair(node, server.url, "websocket")
    second = await node.connect(server.url, "websocket")
    await track(p.tracked, second, p.code)
    third = await node.connect(server.url, "websocket")
    third.emit("trackCode", p.code)
    await expect_error(third, TOO_MANY_TRACKERS)
    third.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})
    await expect_error(third, TOO_MANY_TRACKERS)
    assert await refusals(server.url, "trackers_per_session") == 2
    # One in the list re-joining is not a new one.
    second.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})
    assert only(await second.expect("sessionReconnected"))["role"] == "tracker"
    # A tracker that leaves makes room.
    await second.disconnect()
    third.emit("trackCode", p.code)
    assert only(await third.expect("trackingStarted"))["sessionToken"] == p.token


async def test_trackers_of_a_dead_instance_do_not_count_against_the_cap(
    node: NodeDriver, start_server: Any, redis: aioredis.Redis, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url, TRACKERS_PER_SESSION="2")
    p = await pair(node, server.url, "websocket")
    # Trackers that an instance long gone wrote into the record (a crash, the Node server).
    key = f"session:{p.token}"
    record = await redis.get(key)
    assert record is not None
    ghost = record.replace(
        f'"trackerSocketIds":["{p.tracker.sid}"]',
        f'"trackerSocketIds":["{p.tracker.sid}","deadbeef.ghost"]',
    )
    assert ghost != record
    await redis.set(key, ghost)
    # Its heartbeat stopped a minute ago (an instance never heard of counts as alive until a
    # heartbeat read says otherwise: it may have just started).
    now_s, now_us = await redis.time()
    await redis.zadd("instances", {"deadbeef": now_s * 1000 + now_us // 1000 - 60_000})
    await asyncio.sleep(1.5)  # a heartbeat read
    newcomer = await node.connect(server.url, "websocket")
    newcomer.emit("trackCode", p.code)
    assert only(await newcomer.expect("trackingStarted"))["sessionToken"] == p.token


# --- the attempt limit under concurrency ---------------------------------------------------


class Monitor:
    """`redis-cli monitor` for the length of a block: every command Redis was sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Monitor:
        self._process = await asyncio.create_subprocess_exec(
            "redis-cli", "-u", self.url, "monitor", stdout=asyncio.subprocess.PIPE
        )
        assert self._process.stdout is not None
        assert (await self._process.stdout.readline()).strip() == b"OK"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._process is not None and self._process.stdout is not None
        await asyncio.sleep(0.2)  # what Redis has done is on its way to us
        self._process.terminate()
        output = await self._process.stdout.read()
        await self._process.wait()
        self.lines = output.decode(errors="replace").splitlines()

    def count(self, command: str) -> int:
        return sum(1 for line in self.lines if command in line)


async def test_concurrent_wrong_codes_on_two_instances_are_evaluated_at_most_the_limit(
    node: NodeDriver, start_server: Any, redis_url: str
) -> None:
    await early_in_a_minute()
    a = await start_server(redis_url=redis_url)
    b = await start_server(redis_url=redis_url)
    guessers = [await node.connect(s.url, "websocket") for s in (a, b) * 5]
    async with Monitor(redis_url) as monitor:
        for guesser in guessers:
            for _ in range(5):  # 50 at once, from one address
                guesser.emit("trackCode", new_code())
        answers = [only(await g.expect("error")) for g in guessers for _ in range(5)]
    assert answers.count(INVALID) == 10, answers
    assert answers.count(TOO_MANY) == 40
    # Evaluated: a code looked up. Past the limit nothing is, whatever the timing.
    assert monitor.count('"GET" "code:') == 10


async def test_any_six_digits_are_answered_as_an_unknown_code_and_counted(
    node: NodeDriver, start_server: Any
) -> None:
    await early_in_a_minute()
    server = await start_server()
    guesser = await node.connect(server.url, "websocket")
    answers = []
    for _ in range(6):
        for guess in ("000000", "012345"):
            guesser.emit("trackCode", guess)
            answers.append(only(await guesser.expect("error")))
    assert answers == [INVALID] * 10 + [TOO_MANY] * 2
    guesser.emit("trackCode", "12345")  # not six digits: still the clear validation error
    await expect_error(guesser, "Invalid code: expected a string of 6 digits")
