"""Missed check-ins and all-clears POSTed to an operator's URL, signed, retried, never blocking.

Each notice is JSON with an idempotency key (the same on every retry) and an HMAC-SHA256 of the
body under ALERT_WEBHOOK_SECRET in `X-AllIsWell-Signature: sha256=<hex>`. Sessions are named by
`sessionId`, the SHA-256 of the token (hex): receivers can match the tokens they know, and the
token itself, a bearer secret, never leaves the server. Delivery is at least once per notice while
this process lives; a receiver should de-duplicate on `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Final

import aiohttp
import msgspec

from .clock import Clock
from .logs import token_ref

log = logging.getLogger(__name__)

ATTEMPTS: Final = 8
FIRST_DELAY: Final = 0.5
MAX_DELAY: Final = 30.0
TIMEOUT_SECONDS: Final = 10.0
QUEUE_LIMIT: Final = 10_000
RETRY_STATUSES: Final = frozenset({408, 425, 429})


class Notice(msgspec.Struct, frozen=True, rename="camel"):
    event: str  # "checkInMissed" or "allClear"
    session_id: str
    timestamp: int
    sent_at: int


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, url: str, secret: str, clock: Clock, *, first_delay: float = FIRST_DELAY):
        self.url = url
        self._secret = secret
        self._clock = clock
        self._first_delay = first_delay
        self._queue: asyncio.Queue[tuple[Notice, str]] = asyncio.Queue(QUEUE_LIMIT)
        self.delivered = 0
        self.failed = 0

    def send(self, event: str, token: str, timestamp: int) -> None:
        """Queue a notice; returns at once (socket delivery never waits for the receiver)."""
        session_id = hashlib.sha256(token.encode()).hexdigest()
        notice = Notice(event, session_id, timestamp, self._clock())
        key = f"{event}:{session_id[:32]}:{timestamp}"
        try:
            self._queue.put_nowait((notice, key))
        except asyncio.QueueFull:
            self.failed += 1
            log.error("Webhook queue full: %s for session %s dropped", event, token_ref(token))

    async def run(self) -> None:
        """Deliver queued notices, a few at a time, each with its own retries."""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        ) as http:
            workers = [asyncio.create_task(self._worker(http)) for _ in range(4)]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()

    async def _worker(self, http: aiohttp.ClientSession) -> None:
        while True:
            notice, key = await self._queue.get()
            try:
                await self._deliver(http, notice, key)
            finally:
                self._queue.task_done()

    async def _deliver(self, http: aiohttp.ClientSession, notice: Notice, key: str) -> None:
        body = msgspec.json.encode(notice)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-AllIsWell-Signature": signature(self._secret, body),
            "User-Agent": "alliswell-server",
        }
        delay = self._first_delay
        for attempt in range(1, ATTEMPTS + 1):
            outcome = await self._post(http, body, headers)
            if outcome == "ok":
                self.delivered += 1
                log.info("Webhook %s attempt %d: delivered", key, attempt)
                return
            final = outcome == "refused" or attempt == ATTEMPTS
            log.warning(
                "Webhook %s attempt %d/%d failed (%s)%s",
                key,
                attempt,
                ATTEMPTS,
                outcome,
                ", giving up" if final else f", retrying in {delay:.1f} s",
            )
            if final:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
        self.failed += 1

    async def _post(self, http: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> str:
        try:
            async with http.post(self.url, data=body, headers=headers) as response:
                if response.status < 300:
                    return "ok"
                if response.status >= 500 or response.status in RETRY_STATUSES:
                    return f"HTTP {response.status}"
                return "refused"  # any other 4xx will not get better by retrying
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return exc.__class__.__name__
