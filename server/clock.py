"""Time, injected: the server asks a clock, tests hand it a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> int: ...


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, as the protocol counts time."""
    return time.time_ns() // 1_000_000
