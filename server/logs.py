"""Logging set-up, and the one way a session token may appear in a log line."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Final

# A session token (64 hex digits) and the password of a URL such as REDIS_URL.
_TOKEN: Final = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")
_URL_PASSWORD: Final = re.compile(r"(://[^:/@\s]*):[^@/\s]+@")
# Attributes every LogRecord has: the rest of its __dict__ came from `extra=`.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


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


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at `level`, as text lines or (fmt "json") JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The engine.io and socket.io loggers print packets, which carry tokens: keep them quiet.
    for name in ("engineio.server", "socketio.server", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
