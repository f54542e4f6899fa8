"""Logging set-up, the one way a session token may appear in a log line, and how many lines
one client may write."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

# A session token (64 hex digits) and the password of a URL such as REDIS_URL.
_TOKEN: Final = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")
_URL_PASSWORD: Final = re.compile(r"(://[^:/@\s]*):[^@/\s]+@")
# Attributes every LogRecord has: the rest of its __dict__ came from `extra=`.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
WINDOW_SECONDS: Final = 60.0

# The client address of the HTTP request being handled (set by server.transport), for log
# lines written by libraries that cannot pass `extra={"client": ...}`.
CLIENT: ContextVar[str | None] = ContextVar("client", default=None)

log = logging.getLogger(__name__)


def token_ref(token: str) -> str:
    """A short, stable, non-reversible name for a session token, for logs."""
    return "s-" + hashlib.sha256(token.encode()).hexdigest()[:10]


def redact(text: str) -> str:
    """A last line of defence: no whole session token or URL password reaches the log."""
    text = _TOKEN.sub(lambda match: token_ref(match.group()), text)
    return _URL_PASSWORD.sub(r"\1:***@", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Redacting the encoded line covers extras too; hex digits and "://x:y@" survive encoding.
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class ClientLines(logging.Filter):
    """At most `per_minute` lines per client per minute; the rest are counted, and summed up in
    one line per client at the end of the minute.

    A line is a client's when it carries a `client` attribute (`extra={"client": address}`):
    one client wrote 14,991 lines (1.8 MB) in seconds, a warning per refused registration and
    an info line per malformed packet.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self.suppressed = 0  # in all
        self.on_suppressed: Callable[[], None] | None = None
        self._window = -1
        self._lines: dict[str, int] = {}
        self._held: dict[str, int] = {}  # suppressed this minute, per client
        self._summary: asyncio.TimerHandle | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        client = getattr(record, "client", None)
        if client is None:
            return True
        window = int(self.clock() // WINDOW_SECONDS)
        if window != self._window:
            self.flush()
            self._window = window
        lines = self._lines[client] = self._lines.get(client, 0) + 1
        if lines <= self.per_minute:
            return True
        self._held[client] = self._held.get(client, 0) + 1
        self.suppressed += 1
        if self.on_suppressed is not None:
            self.on_suppressed()
        if self._summary is None:
            self._schedule_summary(window)
        return False

    def _schedule_summary(self, window: int) -> None:
        # The minute's summary is due even if no other client line comes.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = (window + 1) * WINDOW_SECONDS - self.clock()
        self._summary = loop.call_later(max(delay, 0.0), self._summary_due, window)

    def _summary_due(self, window: int) -> None:
        self._summary = None
        if window == self._window:
            self.flush()
            self._window = -1

    def flush(self) -> None:
        """End the minute: one line per client whose lines were suppressed in it."""
        held, self._held, self._lines = self._held, {}, {}
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        for client, count in held.items():
            log.warning("Suppressed %d log lines from client %s in the last minute", count, client)


def configure(level: str, fmt: str = "text", client_lines_per_minute: int = 0) -> ClientLines:
    """Log to stderr at `level`, as text lines or (fmt "json") JSON lines, at most
    `client_lines_per_minute` lines per client (0: no limit)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    lines = ClientLines(client_lines_per_minute or 1 << 62)
    handler.addFilter(lines)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The engine.io and socket.io loggers print packets, which carry tokens: keep them quiet.
    for name in ("engineio.server", "socketio.server", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return lines
