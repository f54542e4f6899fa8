"""Alert lag: from a missed check-in's due time to a connected tracker hearing checkInMissed.

Starts a private redis-server and the server (one instance, or --instances N sharing Redis),
seeds N armed sessions whose alerts fall due within one minute, connects a tracker
(python-socketio client, WebSocket) to a sample of them, and prints lag percentiles, misses and
duplicates. Loopback only; bounded in time.

    .venv/bin/python scripts/alert_lag.py --sessions 10000 --sample 500 --spread 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import socketio
from redis import asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import keys  # noqa: E402
from server.models import Session  # noqa: E402
from server.store import _encode  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def wait_http(url: str, timeout: float = 20) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def seed(
    redis: aioredis.Redis, sessions: int, first_due: int, spread_ms: int
) -> dict[str, int]:
    due: dict[str, int] = {}
    pipe = redis.pipeline(transaction=False)
    for n in range(sessions):
        token = secrets.token_hex(32)
        alert_end = first_due + random.randrange(spread_ms)
        record = Session(
            last_check_in=alert_end - 60_000,
            reminder_time_minutes=0.5,
            alert_time_minutes=1,
            reminder_time_end=alert_end - 30_000,
            alert_time_end=alert_end,
            settings_configured=True,
        )
        pipe.set(keys.session(token), _encode(record), ex=keys.SESSION_TTL_SECONDS)
        pipe.zadd(keys.DEADLINES, {f"alert:{token}": alert_end})
        due[token] = alert_end
        if n % 1000 == 999:
            await pipe.execute()
    await pipe.execute()
    return due


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=500, help="sessions with a connected tracker")
    parser.add_argument(
        "--spread", type=float, default=60.0, help="seconds over which alerts fall due"
    )
    parser.add_argument("--lead", type=float, default=10.0, help="seconds before the first is due")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="alert-lag-"))
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    servers: list[subprocess.Popen[bytes]] = []
    clients: list[socketio.AsyncClient] = []
    redis = aioredis.Redis(port=redis_port)
    try:
        for _ in range(50):
            try:
                await redis.ping()
                break
            except OSError:
                await asyncio.sleep(0.1)
        first_due = now_ms() + int(args.lead * 1000)
        due = await seed(redis, args.sessions, first_due, int(args.spread * 1000))
        urls = []
        for n in range(args.instances):
            port = free_port()
            env = {
                **os.environ,
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "LOG_LEVEL": "WARNING",
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                # Every client here comes from 127.0.0.1: not one hostile address.
                "CONNECTIONS_PER_ADDRESS": "1000000",
            }
            log = open(workdir / f"server-{n}.log", "wb")
            servers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            await wait_http(url)
        heard: dict[str, list[tuple[int, int]]] = {}
        sample = random.sample(sorted(due), min(args.sample, len(due)))
        for i, token in enumerate(sample):
            client = socketio.AsyncClient(reconnection=False)

            @client.on("checkInMissed")
            async def missed(data: dict[str, object], token: str = token) -> None:
                heard.setdefault(token, []).append((int(data["timestamp"]), now_ms()))  # type: ignore[call-overload]

            await client.connect(urls[i % len(urls)], transports=["websocket"])
            await client.emit("reconnectSession", {"sessionToken": token, "role": "tracker"})
            clients.append(client)
        if now_ms() > first_due:
            print("warning: trackers connected after the first alert fell due", file=sys.stderr)
        last_due = max(due[token] for token in sample)
        while now_ms() < last_due + 3_000:
            await asyncio.sleep(0.5)
        lags = sorted(at - stamp for token in sample for stamp, at in heard.get(token, [])[:1])
        wrong = sum(
            1 for token in sample for stamp, _ in heard.get(token, []) if stamp != due[token]
        )
        result = {
            "sessions": args.sessions,
            "sample": len(sample),
            "instances": args.instances,
            "spread_s": args.spread,
            "heard": len(lags),
            "missed": len(sample) - len(heard),
            "duplicates": sum(len(v) - 1 for v in heard.values()),
            "wrong_timestamp": wrong,
            "left_in_redis": await redis.zcard(keys.DEADLINES)
            + await redis.zcard(keys.DEADLINE_LEASES),
            "lag_ms_p50": statistics.median(lags) if lags else None,
            "lag_ms_p99": lags[int(len(lags) * 0.99) - 1] if lags else None,
            "lag_ms_max": lags[-1] if lags else None,
        }
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:>16}: {value}")
    finally:
        for client in clients:
            await client.disconnect()
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await redis.aclose()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
