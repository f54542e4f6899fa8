"""`python -m server`: read the settings, build the app, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import resource
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from . import logs, settings, versions
from .app import create_app, requests_timeout
from .guard import GUARD, Guard
from .ops import METRICS

log = logging.getLogger("server")

# aiohttp's run_app default, kept: an idle keep-alive connection is closed after it.
KEEPALIVE_SECONDS = 75.0

# Exit codes: 2 a setting is wrong (named on stderr), 3 the address cannot be listened on.
EXIT_SETTINGS = 2
EXIT_CANNOT_LISTEN = 3


class CannotListen(Exception):
    """The listening socket could not be made; the message is the one line for stderr."""


def _reason(exc: OSError | UnicodeError) -> str:
    """Why a bind failed, in words: "address already in use", "Name or service not known"."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror) or not isinstance(code, int) or code <= 0:
        return getattr(exc, "strerror", None) or str(exc)
    if code == errno.EADDRINUSE:
        return "address already in use"
    return os.strerror(code).lower()


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Python's cyclic GC by default collects the youngest objects every 700 allocations; the objects
# of events in flight (tasks, futures, packets, awaiting Redis) survive a few such collections,
# reach the oldest generation, and every so often make a full collection scan every object of
# every connection: with 5,000 connections, ~350 ms a time, over half the CPU of a check-in
# (measured with gc.callbacks). Collecting the youngest every 50,000 allocations lets them die
# young, by reference counting, as almost all do.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect less often, and never scan what the start made (modules, the app): frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): about 20% less CPU per event, measured."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (a container's soft 1,024 is a few
    hundred clients); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):  # e.g. an infinite hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, with each connection's protocol wrapped by the guard (connections
    per address, a deadline for the request headers): run_app has no way to wrap it."""

    def __init__(self, runner: web.AppRunner, host: str | None, port: int, guard: Guard) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host or '*'}:{self._port}"

    def bound(self) -> str:
        """Where it listens, as bound: the port the OS chose for PORT=0, `*` for every
        interface when they share one port."""
        assert self._listening is not None
        names = [sock.getsockname() for sock in self._listening.sockets]
        ports = {name[1] for name in names}
        if self._host is None and len(ports) == 1:
            return f"*:{ports.pop()}"
        return ", ".join(sorted({_address(name) for name in names}))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = self._listening = await asyncio.get_running_loop().create_server(
            self._guard.listener(server), self._host, self._port, backlog=self._backlog
        )


async def _serve(app: web.Application, config: settings.Settings) -> None:
    """run_app's own loop, with our site: serve until a signal cancels this, then clean up
    (the app's shutdown drains the clients)."""
    runner = web.AppRunner(
        app,
        handle_signals=True,
        # Access lines are off (server.logs); without a logger aiohttp skips them for good,
        # and keeps no access logger per connection.
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        # No SO_KEEPALIVE per connection (two system calls and a socket object each, 1.5% of
        # pairing's CPU): Engine.IO's pings find a dead peer within 45 s, the keep-alive
        # timeout closes an idle HTTP connection, and the Node server never set it either.
        tcp_keepalive=False,
        shutdown_timeout=requests_timeout(config),
    )
    await runner.setup()
    try:
        site = GuardedSite(runner, config.host, config.port, app[GUARD])
        try:
            await site.start()
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
            where = f"{config.host or '*'}:{config.port}"
            raise CannotListen(f"Cannot listen on {where}: {_reason(exc)}") from None
        log.info("All Is Well server listening on %s", site.bound())
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _run(main: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
    """As web.run_app: SIGTERM/SIGINT raise GracefulExit out of the loop, then `main` is
    cancelled, which runs its cleanup."""
    task = loop.create_task(main)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        rest = asyncio.all_tasks(loop)
        for other in rest:
            other.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main() -> int:
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    lines = logs.configure(
        config.log_level, config.log_format, config.log_lines_per_client_per_minute
    )
    log.info("Open files limit: %d", raise_open_files_limit())
    versions.warn_if_unverified()
    app = create_app(config)
    tune_gc()
    lines.on_suppressed = functools.partial(app[METRICS].refused, "log_lines_per_client_per_minute")
    try:
        _run(_serve(app, config), _event_loop())
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    log.info("All Is Well server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
