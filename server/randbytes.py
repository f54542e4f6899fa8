"""Random bytes for ids, drawn from the operating system a block at a time.

engine.io draws 12 bytes with `secrets.token_bytes` for each connection's id: a getrandom()
system call and two Python calls per connection (1.4% of the CPU of pairing). The same bytes,
the kernel's CSPRNG, taken 4 KiB at a time: one call per 341 ids. Each byte is handed out once;
a forked child starts with an empty block of its own.
"""

from __future__ import annotations

import os
from typing import Final

BLOCK_BYTES: Final = 4096


class RandomBlock:
    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def take(self, count: int) -> bytes:
        """`count` bytes (at most BLOCK_BYTES) never handed out before."""
        pos = self._pos
        if pos + count > len(self._block):
            self._block, pos = os.urandom(BLOCK_BYTES), 0
        self._pos = pos + count
        return self._block[pos : pos + count]

    def forget(self) -> None:
        self._block, self._pos = b"", 0


RANDOM: Final = RandomBlock()
os.register_at_fork(after_in_child=RANDOM.forget)
