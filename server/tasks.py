"""Stopping background tasks for sure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

log = logging.getLogger(__name__)

RECANCEL_SECONDS: Final = 0.5


async def stop(task: asyncio.Task[Any], within: float = 5.0) -> None:
    """Cancel `task` and wait for it, cancelling again until it ends (at most `within` s).

    Once is not always enough: a cancellation that meets a timeout inside redis-py's read
    comes out as redis' TimeoutError, a RedisError that a retrying loop catches and carries on
    from (seen as a shutdown that never ended). The next cancellation lands in its sleep.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.error("Background task %s did not stop", task.get_name())
            return
        await asyncio.wait([task], timeout=min(RECANCEL_SECONDS, left))
    if not task.cancelled() and task.exception() is not None:
        log.error("Background task %s failed", task.get_name(), exc_info=task.exception())
