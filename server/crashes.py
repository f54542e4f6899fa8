"""A crashed instance's people: the survivors tell them.

An instance killed with -9 tells nobody that its sockets are gone. So each binding of a socket
to a session is also kept in Redis, in a set per instance (keys.instance_sessions), added when
a socket joins a session (by whichever instance writes the record: a tracker's instance binds
the tracked app's socket it paired with) and removed when the socket leaves. When an instance
is found dead (instances.py), one survivor, the one whose claim (SET NX) wins, walks its set:
each session is changed through the store like any other change (the dead sockets drop out, as
ids of a dead instance do not count) and its people are told as a transport close would tell
them. A survivor whose claim lost looks again once the claim has run out, in case the winner
died too: a set fully walked is gone by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Final

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .instances import Instances, owner
from .logs import token_ref
from .models import Session
from .presence import Presence, Role
from .redislane import Lane
from .store import StoreUnavailable

log = logging.getLogger(__name__)

CLAIM_MS: Final = 60_000  # a sweep takes far less; a winner that dies is replaced after this
PARALLEL: Final = 50  # sessions changed at once (their writes share the store's group commit)
RETRY_SECONDS: Final = 2.0  # Redis away during a sweep: try again

TRANSIENT: Final = (StoreUnavailable, RedisError, OSError)

Told = Callable[[str, Collection[Role]], Awaitable[None]]

# KEYS: per binding, the set of its socket's instance. ARGV: the sets' lifetime (s), then per
# binding its member. The sets outlive no session: members a lost leave left behind do not
# pile up.
_BIND: Final = """
for i = 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""


def binding(sid: str, token: str, role: Role) -> str:
    return f"{role.value}:{token}:{sid}"


def parse(member: bytes | str) -> tuple[Role, str, str] | None:
    text = member.decode() if isinstance(member, bytes) else member
    role, _, rest = text.partition(":")
    token, _, sid = rest.partition(":")
    try:
        return Role(role), token, sid
    except ValueError:
        return None


class Bindings:
    """Where each instance's sockets are bound, in Redis; nothing without Redis (one instance:
    nobody survives it)."""

    def __init__(self, redis: aioredis.Redis | None = None, lane: Lane | None = None) -> None:
        self._redis = redis
        # Binds and leaves come with every pairing, reconnect and disconnect: down the lane
        # when there is one (server/redislane.py), as the other scripts run per event.
        self._lane = lane
        self._presence: Presence | None = None
        self._records: Callable[[], Iterable[tuple[str, Session]]] = list
        self._marker: str | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._bind = (lane or redis).register_script(_BIND) if redis is not None else None

    @property
    def shared(self) -> bool:
        """Whether bindings are kept in Redis (several instances may be running)."""
        return self._redis is not None

    def watch(
        self,
        instances: Instances,
        presence: Presence,
        records: Callable[[], Iterable[tuple[str, Session]]],
    ) -> None:
        """Write bindings back when Redis loses its data: this instance's sockets (`presence`),
        and every socket the records held here name (a tracked app paired from another
        instance is bound there by the tracker's). Else a crash of their instance after that
        would go untold."""
        if self._redis is not None:
            self._presence = presence
            self._records = records
            instances.listeners.append(self)

    def beat_ok(self, marker: str) -> None:
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker and (self._restoring is None or self._restoring.done()):
            self._restoring = asyncio.create_task(self._restore(marker), name="bindings-restore")

    def beat_failed(self, exc: BaseException) -> None:
        pass  # nothing to do until Redis answers

    async def _restore(self, marker: str) -> None:
        assert self._redis is not None and self._presence is not None
        found: list[tuple[str, str, Role]] = [
            (sid, token, role) for sid, bound in self._presence.items() for token, role in bound
        ]
        for token, session in self._records():
            if session.tracked_socket_id is not None:
                found.append((session.tracked_socket_id, token, Role.TRACKED))
            found += [(sid, token, Role.TRACKER) for sid in session.tracker_socket_ids]
        try:
            await self._bind_all(found)
        except (RedisError, OSError) as exc:
            log.warning("Bindings not written back (%s): at the next heartbeat", exc)
            return
        self._marker = marker

    async def bound(self, sid: str, token: str, role: Role) -> None:
        await self.bound_all([(sid, token, role)])

    async def bound_all(self, bindings: Collection[tuple[str, str, Role]]) -> None:
        """Record (socket, token, role) bindings, all in one round trip."""
        try:
            await self._bind_all(bindings)
        except (RedisError, OSError) as exc:
            # The session still works; only a crash of that instance would go untold.
            sids = ", ".join(sid for sid, _, _ in bindings)
            log.warning("Binding of %s not recorded (%s)", sids, exc.__class__.__name__)

    def members(
        self, bindings: Collection[tuple[str, str, Role]]
    ) -> tuple[list[str], list[str], int]:
        """For a script that records bindings (as _BIND does) in the same call as other work:
        the set of each socket's instance, the members, and the sets' lifetime (s)."""
        instance_keys, members = [], []
        for sid, token, role in bindings:
            instance = owner(sid)
            if instance is not None:
                instance_keys.append(keys.instance_sessions(instance))
                members.append(binding(sid, token, role))
        return instance_keys, members, keys.SESSION_TTL_SECONDS

    async def _bind_all(self, bindings: Collection[tuple[str, str, Role]]) -> None:
        if self._bind is None:
            return
        instance_keys, members, _ = self.members(bindings)
        if members:
            await self._bind(keys=instance_keys, args=[keys.SESSION_TTL_SECONDS, *members])

    async def left(self, sid: str, bindings: Collection[tuple[str, Role]]) -> None:
        instance = owner(sid)
        if self._redis is None or instance is None or not bindings:
            return
        members = [binding(sid, token, role) for token, role in bindings]
        key = keys.instance_sessions(instance)
        try:
            if self._lane is not None:
                await self._lane.call("SREM", key, *members)
            else:
                await self._redis.srem(key, *members)
        except (RedisError, OSError) as exc:
            log.warning("Bindings of %s not removed (%s)", sid, exc.__class__.__name__)

    async def claim(self, instance: str, by: str) -> bool:
        """Whether `by` sweeps `instance`: its claim is new, or its own from a try that failed."""
        assert self._redis is not None
        key = keys.instance_sweep(instance)
        if await self._redis.set(key, by, nx=True, px=CLAIM_MS):
            return True
        holder = await self._redis.get(key)
        return (holder.decode() if isinstance(holder, bytes) else holder) == by

    async def of(self, instance: str) -> list[tuple[Role, str, str]]:
        assert self._redis is not None
        members = await self._redis.smembers(keys.instance_sessions(instance))
        return [parsed for member in members if (parsed := parse(member)) is not None]

    async def done(self, instance: str, members: Collection[tuple[Role, str, str]]) -> None:
        assert self._redis is not None
        if members:
            encoded = [binding(sid, token, role) for role, token, sid in members]
            await self._redis.srem(keys.instance_sessions(instance), *encoded)


class Sweeper:
    """Walks the sessions of each instance found dead, telling each through `tell`."""

    def __init__(self, instances: Instances, bindings: Bindings, tell: Told) -> None:
        self._instances = instances
        self._bindings = bindings
        self._tell = tell

    async def run_forever(self) -> None:
        while True:
            instance = await self._instances.found_dead.get()
            try:
                await self.sweep(instance)
            except (RedisError, OSError) as exc:
                log.warning("Sweep of dead instance %s failed (%s): retrying", instance, exc)
                self._again(instance, RETRY_SECONDS)
            except Exception:
                # A bug: logged with its traceback; the instances that die next are swept.
                log.exception("Sweep of dead instance %s failed", instance)

    def _again(self, instance: str, after: float) -> None:
        asyncio.get_running_loop().call_later(
            after, self._instances.found_dead.put_nowait, instance
        )

    async def sweep(self, instance: str) -> int:
        """Tell the sessions of a dead instance, if this survivor wins the claim; returns how
        many sessions were told."""
        if not await self._bindings.claim(instance, self._instances.id):
            # Another survivor sweeps; look again once its claim runs out, in case it died.
            self._again(instance, CLAIM_MS / 1000)
            return 0
        members = await self._bindings.of(instance)
        by_token: dict[str, set[Role]] = defaultdict(set)
        for role, token, _ in members:
            by_token[token].add(role)
        tokens = list(by_token)
        told, retry = 0, False
        for start in range(0, len(tokens), PARALLEL):
            chunk = tokens[start : start + PARALLEL]
            results = await asyncio.gather(
                *(self._tell(token, by_token[token]) for token in chunk), return_exceptions=True
            )
            failed = set()
            for token, result in zip(chunk, results, strict=True):
                if isinstance(result, TRANSIENT):
                    failed.add(token)  # Redis away: told on the next try
                elif isinstance(result, BaseException):
                    log.error(
                        "Telling session %s of a dead instance failed",
                        token_ref(token),
                        exc_info=result,
                    )
            await self._bindings.done(
                instance, [m for m in members if m[1] in chunk and m[1] not in failed]
            )
            told += len(chunk) - len(failed)
            retry = retry or bool(failed)
        if retry:
            self._again(instance, RETRY_SECONDS)  # the claim is still this survivor's
        if told:
            log.warning("Instance %s died: told %d sessions its sockets were in", instance, told)
        return told
