"""A private redis-server; our server or the Node server against it; their CPU and memory."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from redis import asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")

# Every benchmark client comes from 127.0.0.1: for our server that is one address holding
# thousands of connections and pairing thousands of codes a minute. These per-address quotas
# (SECURITY.md) would refuse the load, so they are raised; the others stay at their defaults
# (EVENTS_IN_FLIGHT_PER_CONNECTION: the closed loop has one event in flight per connection).
RAISED_QUOTAS = {
    "CONNECTIONS_PER_ADDRESS": "1000000",
    "CODE_REGISTRATIONS_PER_MINUTE": "1000000",
    "PENDING_CODES_PER_ADDRESS": "1000000",
    "CODE_ATTEMPTS_PER_MINUTE": "1000000",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> int:
    """Raise this process's open-files limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine_cpu() -> tuple[float, float]:
    """The machine's idle (idle + iowait) and total CPU seconds, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[3] + fields[4]) / TICK, sum(fields) / TICK


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def process_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Servers:
    """A private redis-server, and server processes (ours or Node's) started against it."""

    def __init__(self, workdir: Path, node_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.node_dir = node_dir
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis_proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        self.started = 0
        self.last_log: Path | None = None

    async def wait_redis(self) -> aioredis.Redis:
        redis = aioredis.Redis(port=self.redis_port)
        for _ in range(100):
            try:
                await redis.ping()
                return redis
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def spawn(
        self, kind: str = "ours", root: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start our server (`python -m server` in `root`, by default this checkout) or Node's
        (`node server.js` in node_dir).

        Returns the process and its URL, not waited for. The Node server logs a line per event
        with console.log: its stdout goes to /dev/null; ours runs at LOG_LEVEL=WARNING.
        """
        port = free_port()
        env = {**os.environ, "PORT": str(port), "REDIS_URL": self.redis_url}
        self.started += 1
        self.last_log = self.workdir / f"{kind}-{self.started}.log"
        with open(self.last_log, "wb") as log:
            if kind == "ours":
                env.update(HOST="127.0.0.1", LOG_LEVEL="WARNING", **RAISED_QUOTAS)
                command, cwd, out = [sys.executable, "-m", "server"], root or ROOT, log
            elif kind == "node" and self.node_dir is not None:
                command, cwd = [shutil.which("node") or "node", "server.js"], self.node_dir
                out = subprocess.DEVNULL  # type: ignore[assignment]
            else:
                raise ValueError(f"no server {kind!r}")
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=log)
        return proc, f"http://127.0.0.1:{port}"

    async def start(
        self, kind: str = "ours", root: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        proc, url = self.spawn(kind, root)
        await wait_http(url + "/", proc)
        return proc, url

    def log_tail(self) -> str:
        if self.last_log is None or not self.last_log.exists():
            return ""
        return "\n".join(self.last_log.read_text(errors="replace").splitlines()[-20:])

    def close(self) -> None:
        self.redis_proc.terminate()
        self.redis_proc.wait(10)


def stop(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Poll `url` until it answers 200; returns when (perf_counter) it did."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return time.perf_counter()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.005)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
