"""Code and token guessing is limited per client address, across instances."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from server.limits import BUSY_WAITS, WINDOW_MS, AttemptLimiter, client_address
from tests.support.flows import expect_error, new_code, pair, register
from tests.support.nodeclient import NodeDriver
from tests.support.processes import ServerProcess

TOO_MANY = "Too many attempts. Try again later."
START = 1_800_000_000_000 - 1_800_000_000_000 % WINDOW_MS


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


def test_forwarded_addresses_count_only_behind_a_trusted_proxy() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 10.0.0.1, 203.0.113.9"}
    assert client_address("10.1.2.3", headers, trust_proxy=False) == "10.1.2.3"
    assert client_address("10.1.2.3", headers, trust_proxy=True) == "203.0.113.9"
    both = {**headers, "X-Real-IP": "198.51.100.7"}
    assert client_address("10.1.2.3", both, trust_proxy=True) == "198.51.100.7"
    assert client_address("10.1.2.3", {}, trust_proxy=True) == "10.1.2.3"


def test_ipv6_clients_are_counted_per_64_network() -> None:
    one = client_address("2001:db8:1:2::1", {}, False)
    other = client_address("2001:db8:1:2:ffff::9", {}, False)
    assert one == other == "2001:db8:1:2::/64"
    assert client_address("::ffff:192.0.2.1", {}, False) == "192.0.2.1"


async def test_the_limit_blocks_for_the_rest_of_the_minute_only() -> None:
    clock = FakeClock()
    limiter = AttemptLimiter(clock, limit=10)
    for _ in range(9):
        await limiter.failed("a")
    assert not await limiter.blocked("a")
    await limiter.failed("a")
    assert await limiter.blocked("a") and not await limiter.blocked("b")
    clock.now += WINDOW_MS
    assert not await limiter.blocked("a")


async def test_instances_sharing_redis_share_the_count() -> None:
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock()
    first = AttemptLimiter(clock, 10, redis, lambda: True)
    second = AttemptLimiter(clock, 10, redis, lambda: True)
    for _ in range(5):
        await first.failed("a")
        await second.failed("a")
    assert await first.blocked("a") and await second.blocked("a")
    assert 0 < await redis.ttl(f"code-attempts:a:{START // WINDOW_MS}") <= 120
    await redis.aclose()


async def guess_codes(
    node: NodeDriver, server: ServerProcess, count: int, **opts: object
) -> list[str]:
    """`count` trackCode attempts with codes nobody registered; the error of each."""
    client = await node.connect(server.url, "websocket", **opts)
    answers = []
    for _ in range(count):
        client.emit("trackCode", new_code())
        answers.append((await client.expect("error"))[0])
    await client.disconnect()
    return answers


async def test_eleven_wrong_codes_lock_the_address_out_of_pairing(
    node: NodeDriver, start_server: object, redis_url: str
) -> None:
    server = await start_server(redis_url=redis_url)  # type: ignore[operator]
    tracked = await node.connect(server.url, "websocket")
    code, _ = await register(tracked)
    assert await guess_codes(node, server, 11) == ["Invalid or expired code"] * 10 + [TOO_MANY]
    # Even the right code is refused now: a guesser must learn nothing from a success.
    tracker = await node.connect(server.url, "polling")
    tracker.emit("trackCode", code)
    await expect_error(tracker, TOO_MANY)
    # Taking over someone's code counts and is refused the same way.
    tracker.emit("registerCode", code)
    await expect_error(tracker, TOO_MANY)


async def test_the_count_is_shared_by_instances(
    node: NodeDriver, start_server: object, redis_url: str
) -> None:
    first = await start_server(redis_url=redis_url)  # type: ignore[operator]
    second = await start_server(redis_url=redis_url)  # type: ignore[operator]
    assert await guess_codes(node, first, 6) == ["Invalid or expired code"] * 6
    assert await guess_codes(node, second, 5) == ["Invalid or expired code"] * 4 + [TOO_MANY]


async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_count(
    node: NodeDriver, start_server: object
) -> None:
    server = await start_server(TRUST_PROXY="true")  # type: ignore[operator]
    guesser = {"extraHeaders": {"X-Forwarded-For": "203.0.113.5"}}
    honest = {"extraHeaders": {"X-Forwarded-For": "198.51.100.8"}}
    assert (await guess_codes(node, server, 11, **guesser))[-1] == TOO_MANY
    assert await guess_codes(node, server, 1, **honest) == ["Invalid or expired code"]


async def test_without_trust_a_forwarded_header_does_not_escape_the_limit(
    node: NodeDriver, start_server: object
) -> None:
    server = await start_server()  # type: ignore[operator]
    for n in range(10):
        spoofed = {"extraHeaders": {"X-Forwarded-For": f"203.0.113.{n}"}}
        await guess_codes(node, server, 1, **spoofed)
    assert await guess_codes(node, server, 1) == [TOO_MANY]


@pytest.mark.parametrize("transport", ["polling"])
async def test_honest_pairing_is_not_limited(
    node: NodeDriver, start_server: object, transport: str
) -> None:
    server = await start_server()  # type: ignore[operator]
    for _ in range(12):
        pairing = await pair(node, server.url, transport)
        await pairing.tracked.disconnect()
        await pairing.tracker.disconnect()


async def test_the_status_route_limits_token_guessing(start_server: object) -> None:
    import aiohttp

    server = await start_server()  # type: ignore[operator]
    statuses = []
    async with aiohttp.ClientSession() as http:
        for n in range(11):
            async with http.get(f"{server.url}/api/status/{n:064x}") as response:
                statuses.append((response.status, await response.json()))
    assert statuses[:10] == [(404, {"error": "Invalid session token"})] * 10
    assert statuses[10] == (429, {"error": TOO_MANY})


async def test_a_redis_failure_in_a_burst_does_not_start_the_count_over() -> None:
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock()
    available = True
    limiter = AttemptLimiter(clock, 10, redis, lambda: available)
    for _ in range(9):
        await limiter.failed("a")
    assert await limiter.ticket("a").spend()  # Redis says 9 failures so far
    available = False  # Redis is away (or its pool exhausted) from here on
    assert await limiter.failed("a")
    assert not await limiter.failed("a")
    await redis.aclose()


async def test_an_honest_attempt_gives_its_place_back() -> None:
    redis = fakeredis.FakeAsyncRedis()
    limiter = AttemptLimiter(FakeClock(), 2, redis, lambda: True)
    honest = limiter.ticket("a")
    assert await honest.spend()
    honest.honest()
    await honest.settle()
    await honest.settle()
    assert await limiter.failed("a") and await limiter.failed("a")
    assert not await limiter.failed("a")
    stored = await redis.hgetall(f"code-attempts:a:{START // WINDOW_MS}")
    assert stored == {b"failed": b"2", b"inflight": b"0"}
    await redis.aclose()


async def test_attempts_in_flight_hold_places_that_failures_then_keep() -> None:
    for redis in (fakeredis.FakeAsyncRedis(), None):
        limiter = AttemptLimiter(FakeClock(), 2, redis, lambda redis=redis: redis is not None)
        first, second, third = (limiter.ticket("a") for _ in range(3))
        assert await first.spend() and await second.spend()
        waited = asyncio.get_running_loop().time()
        assert not await third.spend()  # busy the whole time, then refused
        assert asyncio.get_running_loop().time() - waited >= sum(BUSY_WAITS)
        await first.settle()  # a failure: its place stays taken
        assert not await limiter.ticket("a").spend()
        second.honest()
        await second.settle()
        assert await limiter.ticket("a").spend()


async def test_a_place_freed_while_waiting_is_taken() -> None:
    limiter = AttemptLimiter(FakeClock(), 1)
    honest = limiter.ticket("a")
    assert await honest.spend()

    async def pairs_then_settles() -> None:
        await asyncio.sleep(0.08)
        honest.honest()
        await honest.settle()

    settling = asyncio.create_task(pairs_then_settles())
    assert await limiter.ticket("a").spend()
    await settling


async def test_failures_counted_while_redis_was_away_count_on_every_instance_after() -> None:
    # Found by the chaos run: failures one instance counted alone while Redis was away were
    # not known to the others once it was back (12 codes evaluated in a minute, limit 10).
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock()
    available = False
    alone = AttemptLimiter(clock, 10, redis, lambda: available)
    other = AttemptLimiter(clock, 10, redis, lambda: True)
    for _ in range(4):
        assert await alone.failed("a")  # counted in this process only
    available = True
    assert await alone.failed("a")  # Redis back: the four go there with this one
    evaluated = 0
    while await other.failed("a"):
        evaluated += 1
    assert evaluated == 5  # 10 in all, across both
    await redis.aclose()
