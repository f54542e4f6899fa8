"""Delivery to sockets of other instances: python-socketio's AsyncRedisManager, on our terms.

The truth is in Redis keys, written before anything is emitted; the relay only tells other
instances to push it to their sockets now. What PLATFORM.md warns of is handled here: it uses
the server's one Redis client (a blocking pool with retries) instead of building its own with
the raising pool, never builds a second pool on an error (a failed publish is counted, logged
once per outage and dropped: the app learns on reconnect what it missed), and its listener
comes back within 0.25 s of Redis, not 60 s, and hands its connection back to the pool when it
fails.

A socket id names its instance: an event for one socket is published when that instance is
another one not known dead (one just started, not heard of yet, included). An event for a room
(a session's trackers) is published while another instance may be alive: one that beats, or one
a socket id in a record named before any heartbeat read answered for it. Every emit to a room
follows the write of its session, and that write saw every tracker's id. An instance alone
(no other heartbeat, no id naming another) publishes nothing: it costs what it did before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import socketio
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import jsonlib, keys, tasks
from .instances import Instances, owner
from .rooms import IndexedRooms
from .transport import deliver

log = logging.getLogger(__name__)

LISTEN_POLL_SECONDS: Final = 1.0  # the listener wakes up at least this often (health checks)
# While Redis is away the listener tries again this often (a refused connection costs nothing):
# what other instances publish in the moment after Redis is back would not reach this one.
RESUBSCRIBE_MAX_SECONDS: Final = 0.25


class Relay(IndexedRooms, socketio.AsyncRedisManager):  # type: ignore[misc]
    name = "alliswell-relay"
    watch: Callable[[str, Any, Any], None] | None = None  # see presence.Joins

    def __init__(self, redis: aioredis.Redis, instances: Instances) -> None:
        super().__init__(channel=keys.RELAY_CHANNEL, json=jsonlib)
        self.redis = redis
        self.instances = instances
        self.host_id = instances.id
        self.published = 0  # for /metrics
        self.failures = 0
        self._failing = False
        self._closing = False

    def _redis_connect(self) -> None:
        raise RuntimeError("the relay uses the server's Redis client")  # never a pool of its own

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        namespace = namespace or "/"
        if callback is not None:
            await super().emit(event, data, namespace, room, skip_sid, callback, **kwargs)
            return
        await deliver(self, event, data, namespace, room, skip_sid)
        if kwargs.get("ignore_queue") or not self._elsewhere(room):
            return
        args = list(data) if isinstance(data, tuple) else [data]
        await self._publish(
            {
                "method": "emit",
                "event": event,
                "data": args,
                "namespace": namespace,
                "room": room,
                "skip_sid": skip_sid,
                "host_id": self.host_id,
            }
        )

    def _elsewhere(self, room: Any) -> bool:
        """Whether the recipients may include sockets of another instance that is not dead."""
        instance = owner(room) if isinstance(room, str) else None
        if instance is None:
            # Everyone, several rooms, or a named room (a session's trackers): members may
            # be on any instance that may be alive.
            return self.instances.others
        return instance != self.instances.id and self.instances.is_live(room)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """An event from another instance, for this instance's sockets."""
        data = message.get("data")
        if not isinstance(data, list) or not isinstance(message.get("event"), str):
            return
        payload: Any = data[0] if len(data) == 1 else tuple(data)
        await deliver(
            self,
            message["event"],
            payload,
            message.get("namespace") or "/",
            message.get("room"),
            message.get("skip_sid"),
        )

    async def _publish(self, data: dict[str, Any]) -> None:
        try:
            await self.redis.publish(self.channel, jsonlib.dumps(data))
        except (RedisError, OSError) as exc:
            self.failures += 1
            if not self._failing:
                log.warning(
                    "Cross-instance delivery failed (%s): sockets on other instances get it "
                    "when they reconnect",
                    exc.__class__.__name__,
                )
            self._failing = True
            return
        self.published += 1
        if self._failing:
            log.info("Cross-instance delivery works again")
            self._failing = False

    async def _listen(self) -> AsyncIterator[bytes]:
        delay = 0.1
        while not self._closing:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                delay = 0.1
                while not self._closing:
                    message = await pubsub.get_message(timeout=LISTEN_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        yield message["data"]
            except (RedisError, OSError) as exc:
                log.debug("Relay listener lost Redis: %s", exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # back to the pool
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX_SECONDS)

    async def close(self) -> None:
        """Stop listening (python-socketio's listener runs until cancelled; see tasks.stop)."""
        self._closing = True
        task = getattr(self, "thread", None)
        if task is not None:
            await tasks.stop(task)
