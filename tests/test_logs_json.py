"""LOG_FORMAT=json: one JSON object per line, and never a whole session token or password."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from server.logs import JsonFormatter, TextFormatter, redact, token_ref
from tests.support.flows import check_in, pair, unknown_token

FIELDS = {"time", "level", "logger", "message"}


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("server.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


@pytest.mark.node
async def test_every_line_is_json_and_no_session_token_is_logged(start_server, node):
    server = await start_server(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    p = await pair(node, server.url, "polling")
    await check_in(p.tracked, p.token)
    p.tracked.emit("checkIn", {"not": "a token"})  # rejected: logged
    await p.tracked.expect("error")
    tracker = await node.connect(server.url, "websocket")
    tracker.emit("reconnectSession", {"sessionToken": p.token, "role": "tracker"})
    await tracker.expect("sessionReconnected")
    tracker.emit("checkIn", unknown_token())
    await tracker.expect("error")
    assert server.stop() == 0

    lines = [line for line in server.log_text().splitlines() if not line.startswith("=====")]
    entries = [json.loads(line) for line in lines]  # every line parses
    assert entries and all(FIELDS <= entry.keys() for entry in entries), entries
    messages = [entry["message"] for entry in entries]
    assert any(f"Session created: {token_ref(p.token)}" in m for m in messages), messages
    assert any("listening on" in m for m in messages) and "All Is Well server stopped" in messages
    assert p.token not in server.log_text()


def test_the_json_formatter_keeps_extras_and_the_exception_on_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failing = record("Handler %s failed", "checkIn", sid="abc", attempts=3)
        failing.exc_info = sys.exc_info()

    line = JsonFormatter().format(failing)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "server.test"
    assert entry["message"] == "Handler checkIn failed"
    assert (entry["sid"], entry["attempts"]) == ("abc", 3)
    assert "RuntimeError: boom" in entry["exception"]


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_tokens_and_url_passwords_are_redacted_in_both_formats(formatter):
    token = unknown_token()
    line = formatter.format(
        record("Lost %s with redis://default:hunter2@redis:6379", token, token=token)
    )

    assert token not in line and "hunter2" not in line
    assert token_ref(token) in line and "redis://default:***@redis:6379" in line


def test_redact_leaves_ordinary_text_alone():
    assert redact("Swept 3 codes and 2 sessions from memory") == (
        "Swept 3 codes and 2 sessions from memory"
    )
