"""Background tasks: supervised while they run, stopped for sure at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

log = logging.getLogger(__name__)

RECANCEL_SECONDS: Final = 0.5
RESTART_FIRST_SECONDS: Final = 0.1
RESTART_MAX_SECONDS: Final = 10.0
# A run that lasted this long was healthy: the next crash restarts it at the first delay again.
HEALTHY_RUN_SECONDS: Final = 60.0

Work = Callable[[], Coroutine[Any, Any, None]]

_loop: asyncio.AbstractEventLoop | None = None


def running_loop() -> asyncio.AbstractEventLoop:
    """`asyncio.get_running_loop()`, for the paths run per event.

    On Python 3.11 every `get_running_loop()` (and `current_task()`, `asyncio.create_task()`)
    makes a getpid() system call: two per event were 8% of the server's CPU under a load of
    check-ins (py-spy --native). The loop is looked up again only when the one seen last has
    stopped: the server runs one loop, in one thread, at a time.
    """
    global _loop
    loop = _loop
    if loop is None or not loop.is_running():
        loop = _loop = asyncio.get_running_loop()
    return loop


def supervise(
    name: str,
    work: Work,
    on_crash: Callable[[str], None] = lambda name: None,
    *,
    first_delay: float = RESTART_FIRST_SECONDS,
    max_delay: float = RESTART_MAX_SECONDS,
) -> asyncio.Task[None]:
    """Run `work()` until cancelled: a crash (or a return: the work is meant to run forever) is
    logged with its traceback, told to `on_crash(name)` (for /metrics), and the work started
    again after a delay that doubles up to `max_delay`."""
    return asyncio.create_task(_supervised(name, work, on_crash, first_delay, max_delay), name=name)


async def _supervised(
    name: str,
    work: Work,
    on_crash: Callable[[str], None],
    first_delay: float,
    max_delay: float,
) -> None:
    delay = first_delay
    while True:
        started = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            if _cancelling():
                raise asyncio.CancelledError from None  # stopped while it failed: no crash
            log.exception("Background task %s crashed: restarting it in %.1f s", name, delay)
        else:
            if _cancelling():
                # Some work swallows its cancellation and returns (python-socketio's
                # listener): it was stopped, it did not end by itself.
                raise asyncio.CancelledError
            log.error("Background task %s ended unexpectedly: restarting it in %.1f s", name, delay)
        on_crash(name)
        if time.monotonic() - started > HEALTHY_RUN_SECONDS:
            delay = first_delay
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
