"""Real processes for black-box tests: a private redis-server and the server under test.

Process control (stop, kill) is synchronous and quick; waiting for the server to answer
HTTP is async so that the test's event loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Overrides the command that starts the server under test (shell syntax), e.g. to run the
#: compatibility suite against the original Node server: ALLISWELL_SERVER_CMD="node server.js".
SERVER_CMD_ENV = "ALLISWELL_SERVER_CMD"


def _port_block() -> tuple[int, int]:
    """This pytest process's ports: just below the kernel's ephemeral range (where no
    outgoing connection takes one), split between pytest-xdist's workers."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low = max(1024, ephemeral - 12_000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (ephemeral - low) // max(workers, 1)
    start = low + size * (worker % max(workers, 1))
    return start, start + size


_BLOCK = _port_block()
# From a random point of the block, so that two test runs started side by side do not walk the
# same ports in step.
_NEXT = itertools.count(random.randrange(_BLOCK[1] - _BLOCK[0]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The ports of the servers and Redis the tests start. The kernel's own choice (binding
    port 0) came from its ephemeral range, which the tests' client connections use too, and
    was released before the server bound it: in parallel workers (scripts/test.sh), another
    worker's server or a client connection could take it in between. Here each worker walks
    its own block below that range, a port at a time (skipping one in use or in TIME_WAIT).
    """
    start, end = _BLOCK
    for _ in range(end - start):
        port = start + next(_NEXT) % (end - start)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{end - 1}")


def http_status(url: str) -> int | str:
    """The HTTP status of GET `url`, or the name of the error when there is no answer."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (OSError, ValueError) as exc:
        return type(exc).__name__


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- Redis


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1, in its own directory.

    ``stop()`` shuts it down cleanly, ``kill()`` SIGKILLs it, ``start()`` starts it (again) on
    the same port with the same directory, so with ``appendonly=True`` the data survives.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        appendonly: bool = False,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.workdir = Path(workdir)
        self.appendonly = appendonly
        self.extra_args = extra_args  # e.g. ("--enable-debug-command", "local") for DEBUG SLEEP
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: the tests need a real Redis "
                "(install it, e.g. `apt-get install redis-server`)"
            )
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always"]
        args += self.extra_args
        self.process = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.process.returncode}:\n"
                    + self._log_tail()
                )
            with contextlib.suppress(OSError):
                if self.command("PING") == "+PONG":
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def command(self, *parts: str, timeout: float = 2.0) -> str:
        """Send one command over a fresh connection and return the first reply line."""
        payload = f"*{len(parts)}\r\n".encode()
        for part in parts:
            data = part.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.decode(errors="replace").split("\r\n", 1)[0]

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != "+OK":
            raise RuntimeError(f"FLUSHALL failed: {reply}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SHUTDOWN NOSAVE (SIGTERM as a fallback); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.command("SHUTDOWN", "NOSAVE")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: Redis dies without any chance to flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no redis log)"


# --------------------------------------------------------------------------- Server


class ServerProcess:
    """The server under test: ``python -m server`` from the repository root.

    Environment: PORT, HOST=127.0.0.1, LOG_LEVEL=DEBUG, REDIS_URL (removed from the
    environment when ``redis_url`` is None) plus ``env`` (a None value removes a variable).
    stdout and stderr go to ``log_path``; ``restart()`` reuses the port and environment.
    """

    def __init__(
        self,
        log_path: Path,
        *,
        redis_url: str | None = None,
        env: dict[str, str | None] | None = None,
        port: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.log_path = Path(log_path)
        override = os.environ.get(SERVER_CMD_ENV)
        self.command = command or (
            shlex.split(override) if override else [sys.executable, "-m", "server"]
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("REDIS_URL", None)
        env.update(
            PORT=str(self.port),
            HOST="127.0.0.1",
            LOG_LEVEL="DEBUG",
            PYTHONUNBUFFERED="1",
        )
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        for key, value in self.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    async def start(self, timeout: float = 20.0) -> ServerProcess:
        if self.running:
            raise RuntimeError(f"server on port {self.port} is already running")
        self.process = self._spawn()
        await self._wait_ready(timeout)
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"===== starting {shlex.join(self.command)} on port {self.port}\n".encode())
            log.flush()
            return subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def restart(self, timeout: float = 20.0) -> ServerProcess:
        """Stop (if running) and start again on the same port with the same environment."""
        if self.running:
            self.stop()
        return await self.start(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code. A server that ignores SIGTERM for
        ``timeout`` seconds is killed and reported as an error."""
        assert self.process is not None, "server was never started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"server did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}"
                ) from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown at all."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_text(), lines)

    async def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited early with code {self.process.returncode}; log tail:\n"
                    + self.log_tail()
                )
            status = await asyncio.to_thread(self._probe)
            if status == 200:
                return
            last_error = f"GET / -> {status}"
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"server on port {self.port} not ready after {timeout} s ({last_error}); "
                    f"log tail:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    def _probe(self) -> int | str:
        return http_status(self.url + "/")
