"""LOG_LINES_PER_CLIENT_PER_MINUTE: a client's lines beyond it are counted, not written."""

from __future__ import annotations

import logging

import pytest

from server.logs import ClientLines


def line(client: str | None = None) -> logging.LogRecord:
    extra = {} if client is None else {"client": client}
    return logging.makeLogRecord({"name": "server.events", "msg": "Rejected", **extra})


def test_a_client_gets_a_few_lines_a_minute_and_the_rest_are_only_counted() -> None:
    now = [0.0]
    lines = ClientLines(3, clock=lambda: now[0])

    written = [lines.filter(line("192.0.2.1")) for _ in range(10)]

    assert written == [True] * 3 + [False] * 7
    assert lines.filter(line("192.0.2.2"))  # another client has its own
    assert lines.filter(line())  # a line that is nobody's is always written
    assert lines.suppressed == 7


def test_each_suppressed_client_is_summed_up_once_when_its_minute_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    counted: list[int] = []
    lines = ClientLines(2, clock=lambda: now[0])
    lines.on_suppressed = lambda: counted.append(1)
    for _ in range(5):
        lines.filter(line("192.0.2.1"))
    lines.filter(line("192.0.2.2"))

    now[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="server.logs"):
        assert lines.filter(line("192.0.2.1"))  # a new minute

    summaries = [r.getMessage() for r in caplog.records if r.name == "server.logs"]
    assert summaries == ["Suppressed 3 log lines from client 192.0.2.1 in the last minute"]
    assert len(counted) == 3
