"""Start-up errors are as clean as the settings errors: a port already taken or a host that
cannot be listened on is one line on stderr and exit code 3, never a traceback after a
"listening" line; "listening" names the address as bound (PORT=0: the port the OS chose)."""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.processes import REPO_ROOT, ServerProcess, free_port, http_status

EXIT_CANNOT_LISTEN = 3
LISTENING = re.compile(r"All Is Well server listening on (\S+):(\d+)$")


def server_command(tmp_path: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    """`python -m server` and its environment, as the start_server fixture runs it."""
    process = ServerProcess(tmp_path / "unused.log", env=dict(env))
    return process.command, process.environment()


def run_to_exit(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command, environment = server_command(tmp_path, **env)
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def error_lines(stderr: str) -> list[str]:
    """What is not a log line (those start with a date): the message for a person."""
    return [line for line in stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]


def test_a_port_already_taken_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(tmp_path, PORT=str(port), HOST="127.0.0.1")
    assert result.returncode == EXIT_CANNOT_LISTEN, result.stderr
    assert error_lines(result.stderr) == [
        f"Cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "listening on" not in output


def test_a_host_that_is_no_address_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    port = free_port()
    result = run_to_exit(tmp_path, PORT=str(port), HOST="999.1.1.1")
    assert result.returncode == EXIT_CANNOT_LISTEN, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Cannot listen on 999.1.1.1:{port}: "), line
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "listening on" not in output


def test_a_bad_setting_still_exits_2_before_any_listening(tmp_path: Path) -> None:
    result = run_to_exit(tmp_path, PORT="70000")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "Configuration error: PORT must be between 0 and 65535, got 70000"
    ]


def test_port_0_logs_the_port_the_os_gave_and_serves_on_it(tmp_path: Path) -> None:
    command, environment = server_command(tmp_path, PORT="0", HOST="127.0.0.1")
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        match = None
        while match is None and (left := deadline - time.monotonic()) > 0:
            if not select.select([process.stderr], [], [], left)[0]:
                break  # nothing within the deadline
            line = process.stderr.readline()
            if not line:
                break  # exited
            lines.append(line)
            match = LISTENING.search(line.rstrip())
        assert match is not None, "".join(lines)
        host, port = match[1], int(match[2])
        assert host == "127.0.0.1" and port != 0
        assert http_status(f"http://127.0.0.1:{port}/") == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0


def test_an_unverified_engineio_release_is_named_in_one_warning_at_start(tmp_path: Path) -> None:
    # A dist-info ahead of site-packages on sys.path: importlib.metadata reports 4.16.0 while
    # the engine.io actually imported is the installed one.
    fake = tmp_path / "fake" / "python_engineio-4.16.0.dist-info"
    fake.mkdir(parents=True)
    metadata = "Metadata-Version: 2.1\nName: python-engineio\nVersion: 4.16.0\n"
    (fake / "METADATA").write_text(metadata)
    command, environment = server_command(tmp_path, PORT="0", HOST="127.0.0.1")
    environment["PYTHONPATH"] = str(fake.parent)
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([process.stderr], [], [], left)[0]:
                break
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if LISTENING.search(line.rstrip()):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stderr is not None:
            process.stderr.close()
    warnings = [line for line in lines if "Unverified versions installed" in line]
    assert len(warnings) == 1, "".join(lines)
    assert "python-engineio 4.16.0 (verified: ~=4.15.1)" in warnings[0]
    assert "WARNING" in warnings[0]
