"""Random bytes for ids, a block at a time (server/randbytes.py)."""

from __future__ import annotations

import os
import re

import engineio
import pytest

from server import randbytes
from server.instances import SEPARATOR
from server.transport import EngineServer


def test_no_byte_is_handed_out_twice_and_blocks_are_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[bytes] = []
    real = os.urandom

    def urandom(count: int) -> bytes:
        block = real(count)
        drawn.append(block)
        return block

    monkeypatch.setattr(randbytes.os, "urandom", urandom)
    block = randbytes.RandomBlock()
    taken = b"".join(block.take(12) for _ in range(1000))
    # 341 twelve-byte ids per 4 KiB block: 3 blocks for 1,000, each id a fresh slice of one.
    assert len(drawn) == 3
    expected = b"".join(b[: (len(b) // 12) * 12] for b in drawn)[: len(taken)]
    assert taken == expected


def test_engineio_ids_keep_their_shape_and_differ() -> None:
    server = EngineServer(async_mode="aiohttp")
    server.instance_id = "abcd1234"
    ids = [server.generate_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    stock = engineio.AsyncServer(async_mode="aiohttp").generate_id()
    for sid in ids:
        instance, _, rest = sid.partition(SEPARATOR)
        assert instance == "abcd1234"
        assert len(rest) == len(stock) == 20 and re.fullmatch(r"[A-Za-z0-9_-]{20}", rest)
