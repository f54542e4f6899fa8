"""Logging set-up, and the one way a session token may appear in a log line."""

from __future__ import annotations

import hashlib
import logging


def token_ref(token: str) -> str:
    """A short, stable, non-reversible name for a session token, for logs."""
    return "s-" + hashlib.sha256(token.encode()).hexdigest()[:10]


def configure(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The engine.io and socket.io loggers print packets, which carry tokens: keep them quiet.
    for name in ("engineio.server", "socketio.server", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
