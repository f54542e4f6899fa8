"""Codes in Redis: a leaving socket releases them in one round trip, and an address's pending
codes are counted across instances so that expiry and release keep the count right; without
Redis the count holds in the process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from msgspec.structs import replace
from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from server import keys
from server.clock import wall_ms
from server.codes import Codes, TooManyPending
from server.instances import Instances
from server.models import PendingCode
from server.pairing import CODE_TTL_MS

HOME = "192.0.2.10"


class RoundTrips:
    """Counts the requests a Redis client sends: a command, or a whole pipeline."""

    def __init__(self, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        command = redis.execute_command
        pipeline = redis.pipeline

        async def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await command(*args, **kwargs)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def counted_execute(*a: Any, **k: Any) -> Any:
                self.count += 1
                return await execute(*a, **k)

            pipe.execute = counted_execute  # type: ignore[method-assign]
            return pipe

        monkeypatch.setattr(redis, "execute_command", counted_command)
        monkeypatch.setattr(redis, "pipeline", counted_pipeline)


def codes_on(redis: aioredis.Redis, pending_per_address: int = 100) -> tuple[Codes, Instances]:
    instances = Instances(wall_ms, redis)
    codes = Codes(
        wall_ms, instances, 300_000, redis, lambda: True, pending_per_address=pending_per_address
    )
    return codes, instances


def entry(code: str, sid: str, token: str | None = None) -> PendingCode:
    return PendingCode(
        code=code,
        tracked_sid=sid,
        expires_at=wall_ms() + CODE_TTL_MS,
        session_token=token,
        address=HOME,
    )


async def test_a_leaving_socket_releases_all_its_codes_in_one_round_trip(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes, instances = codes_on(server_redis)
    sid = f"{instances.id}.leaver"
    names = [str(200000 + n) for n in range(12)]
    for n, code in enumerate(names):
        token = f"{n:064x}" if n >= 2 else None  # two pending, ten paired
        assert await codes.put(entry(code, sid, token), await codes.get(code)) is not None

    trips = RoundTrips(server_redis, monkeypatch)
    released = await codes.release(sid, wall_ms())

    assert trips.count == 1
    assert sorted(e.code for e in released) == names
    for code in names:
        seen = await codes.get(code)
        assert seen.entry is not None and seen.entry.tracked_sid is None, seen


async def test_a_socket_with_one_code_releases_it_with_one_command(
    server_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes, instances = codes_on(server_redis)
    sid = f"{instances.id}.app"
    for code in ("250000", "250001"):  # Redis learns the script (SCRIPT LOAD) once
        assert await codes.put(entry(code, sid), await codes.get(code)) is not None
    await codes.release(sid, wall_ms())
    assert await codes.put(entry("250002", sid), await codes.get("250002")) is not None
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counted(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        sent.append(b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks))
        await original(conn, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    released = await codes.release(sid, wall_ms())

    assert [e.code for e in released] == ["250002"]
    assert len(sent) == 1 and b"EVALSHA" in sent[0]  # not SCRIPT EXISTS first, as a pipeline


async def test_a_code_changed_by_another_instance_is_read_again_when_its_owner_leaves(
    server_redis: aioredis.Redis,
) -> None:
    here, instances = codes_on(server_redis)
    there, _ = codes_on(server_redis)
    sid = f"{instances.id}.leaver"
    await here.put(entry("300001", sid), await here.get("300001"))
    # A tracker on the other instance pairs the code: this instance's copy is stale.
    seen = await there.get("300001")
    assert seen.entry is not None
    paired = PendingCode(
        code="300001",
        tracked_sid=sid,
        expires_at=seen.entry.expires_at,
        session_token="ab" * 32,
        address=HOME,
    )
    assert await there.put(paired, seen) is not None

    released = await here.release(sid, wall_ms())

    assert [e.session_token for e in released] == ["ab" * 32]
    after = await here.get("300001")
    assert after.entry is not None and after.entry.tracked_sid is None
    assert after.entry.session_token == "ab" * 32


async def test_an_address_holds_at_most_its_pending_codes_on_every_instance(
    server_redis: aioredis.Redis,
) -> None:
    one, instances = codes_on(server_redis, pending_per_address=3)
    two, other = codes_on(server_redis, pending_per_address=3)
    await one.put(entry("400001", f"{instances.id}.a"), await one.get("400001"))
    await two.put(entry("400002", f"{other.id}.b"), await two.get("400002"))
    await one.put(entry("400003", f"{instances.id}.c"), await one.get("400003"))

    with pytest.raises(TooManyPending):
        await two.put(entry("400004", f"{other.id}.d"), await two.get("400004"))
    assert await server_redis.get(keys.code("400004")) is None
    # Re-registering a counted code is not one more.
    again = await one.get("400001")
    assert await one.put(entry("400001", f"{instances.id}.a"), again) is not None

    # A code that pairs, or goes, stops counting at once.
    seen = await one.get("400001")
    assert seen.entry is not None
    token = "cd" * 32
    assert await one.put(replace(seen.entry, session_token=token), seen)
    assert await two.delete(await two.get("400002"))
    for code in ("400004", "400005"):
        assert await two.put(entry(code, f"{other.id}.d"), await two.get(code)) is not None
    assert await server_redis.zcard(keys.pending_codes(HOME)) == 3


async def test_pending_codes_stop_counting_when_they_expire(server_redis: aioredis.Redis) -> None:
    codes, instances = codes_on(server_redis, pending_per_address=1)
    expiring = PendingCode(
        code="500001", tracked_sid=f"{instances.id}.a", expires_at=wall_ms() + 1000, address=HOME
    )
    await codes.put(expiring, await codes.get("500001"))
    with pytest.raises(TooManyPending):  # within the second, even on a busy machine
        await codes.put(entry("500002", f"{instances.id}.b"), await codes.get("500002"))
    await asyncio.sleep(1.1)
    assert await codes.put(entry("500002", f"{instances.id}.b"), await codes.get("500002"))
    assert 0 < await server_redis.pttl(keys.pending_codes(HOME)) <= CODE_TTL_MS


async def test_without_redis_an_address_holds_at_most_its_pending_codes() -> None:
    instances = Instances(wall_ms)
    codes = Codes(wall_ms, instances, 300_000, pending_per_address=2)
    for code in ("600001", "600002"):
        assert await codes.put(entry(code, f"{instances.id}.a"), await codes.get(code))
    with pytest.raises(TooManyPending):
        await codes.put(entry("600003", f"{instances.id}.b"), await codes.get("600003"))
    assert (await codes.get("600003")).entry is None
    await codes.delete(await codes.get("600001"))
    assert await codes.put(entry("600003", f"{instances.id}.b"), await codes.get("600003"))


async def test_a_socket_keeps_its_newest_pending_codes_with_or_without_redis(
    server_redis: aioredis.Redis,
) -> None:
    for redis in (server_redis, None):
        instances = Instances(wall_ms, redis)
        shared = redis is not None
        codes = Codes(wall_ms, instances, 300_000, redis, lambda shared=shared: shared)
        sid = f"{instances.id}.app"
        names = ["700001", "700002", "700003"] if redis else ["800001", "800002", "800003"]
        for n, code in enumerate(names):
            fresh = replace(entry(code, sid), expires_at=wall_ms() + CODE_TTL_MS + n)
            assert await codes.put(fresh, await codes.get(code))
        paired = replace(entry("900009", sid), session_token="ef" * 32)
        assert await codes.put(paired, await codes.get("900009"))  # paired: never retired

        assert await codes.retire_pending(sid, keep=2) == 1

        assert (await codes.get(names[0])).entry is None
        for code in (*names[1:], "900009"):
            assert (await codes.get(code)).entry is not None, code
        await codes.delete(await codes.get("900009"))
