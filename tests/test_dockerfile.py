"""The Dockerfile, checked without a Docker engine: its shape, and its commands run as the image
would run them (the virtualenv's python standing in for the image's, PORT set as Railway sets it).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from server.demo import STATIC
from tests.support.processes import REPO_ROOT, free_port

DOCKERFILE = REPO_ROOT / "Dockerfile"
Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def final(keyword: str) -> list[str]:
    return [args for kw, args in stages()[-1] if kw == keyword]


def as_run_here(command: list[str]) -> list[str]:
    """The image's `python` is the virtualenv's here."""
    assert command[0] == "python", command
    return [sys.executable, *command[1:]]


def image_command() -> list[str]:
    command = json.loads(final("CMD")[-1])  # exec form: a JSON array, no shell in between
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def healthcheck_command() -> list[str]:
    check = final("HEALTHCHECK")[-1]
    options, _, exec_form = check.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), options
    return list(json.loads(exec_form))


def image_environment(port: int) -> dict[str, str]:
    """The ENV of the final stage (PATH aside), and PORT as Railway injects it."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PORT": str(port)}
    for args in final("ENV"):
        for pair in args.split():
            name, _, value = pair.partition("=")
            if name != "PATH":
                env[name] = value
    return env


def healthz(port: int) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return int(response.status)
    except OSError as exc:
        return type(exc).__name__


def test_the_image_is_multi_stage_slim_and_runs_as_a_non_root_user():
    built = stages()
    assert len(built) >= 2
    base = built[-1][0][1]
    assert base.startswith("python:") and base.endswith("-slim"), base
    assert any(args.startswith("--from=") for args in final("COPY"))
    users = final("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def test_the_healthcheck_probes_healthz_in_exec_form():
    command = healthcheck_command()
    assert command[0] == "python"
    assert "/healthz" in " ".join(command) and "PORT" in " ".join(command)


def test_the_image_command_starts_answers_and_stops_on_sigterm(tmp_path: Path):
    port = free_port()
    env = image_environment(port)
    server = subprocess.Popen(
        as_run_here(image_command()),
        cwd=tmp_path,  # not the source tree: the image has only the installed package
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while (status := healthz(port)) != 200:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        check = subprocess.run(as_run_here(healthcheck_command()), env=env, timeout=10)
        assert check.returncode == 0

        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, output
    assert b"Traceback" not in output, output
    check = subprocess.run(as_run_here(healthcheck_command()), env=env, timeout=10)
    assert check.returncode != 0  # nothing answers any more: the healthcheck says so


def build_stage_commands() -> list[str]:
    """The shell commands of the build stage's RUN lines, split at `&&`."""
    return [
        command.strip()
        for keyword, args in stages()[0]
        if keyword == "RUN"
        for command in args.split("&&")
    ]


def pip_installs() -> list[list[str]]:
    return [
        shlex.split(command)
        for command in build_stage_commands()
        if re.search(r"\bpip install\b", command)
    ]


def test_the_image_installs_exactly_the_locked_versions_then_the_server_alone():
    installs = pip_installs()
    assert len(installs) == 2, installs
    locked, server = installs
    # Every file checked against the lock's hashes, nothing resolved anew.
    assert {"--require-hashes", "--no-deps"} <= set(locked), locked
    assert locked[locked.index("-r") + 1] == "requirements.lock", locked
    # The server alone, built by the locked setuptools rather than whatever is newest.
    assert {"--no-deps", "--no-build-isolation"} <= set(server) and server[-1] == ".", server
    assert not any("--upgrade" in part or part == "-U" for part in locked + server)
    copied = [args.split()[0] for keyword, args in stages()[0] if keyword == "COPY"]
    assert copied[0] == "requirements.lock", copied


def test_the_built_package_carries_the_demo_files(tmp_path: Path):
    # What the build stage copies in, built as it builds it: pip, no build isolation, the
    # virtualenv's setuptools (pinned in the lock files, so there on every Python).
    for source in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / source, tmp_path / source)
    shutil.copytree(
        REPO_ROOT / "server", tmp_path / "server", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run(
        [*build, "--no-deps", "--no-build-isolation", "--wheel-dir", "out", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # a quiet build: nothing to heed

    [wheel] = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as built:
        for name in ("demo.html", "demo.js", "socket.io.min.js"):
            packed = built.read(f"server/static/{name}")
            assert packed == (STATIC / name).read_bytes(), name


@pytest.mark.parametrize(
    "excluded", [".git", ".venv", ".venv-*", ".env", "**/node_modules", "tests"]
)
def test_the_build_context_leaves_out_local_state_and_secrets(excluded: str):
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert excluded in ignored
    kept = ("server", "server/static", "*.js", "requirements.lock", "*.lock", "pyproject.toml")
    assert not any(line.strip() in kept for line in ignored)
