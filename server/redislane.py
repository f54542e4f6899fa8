"""One pipelined Redis connection for the scripts run per event (the group commit, pairing).

redis-py takes a connection from its pool for each command and gives it back: a lock and a
condition, a timeout context to get it, a health check, a `wait_for` to send and another
timeout to read, a retry wrapper: 128 µs of CPU per script call, 50 calls at once. Sent down
one connection, the next command going out before the last reply is back, the same call costs
12 µs, the commands of one turn of the loop written together (84 against 222 one call at a
time; `scripts/redis_lane_bench.py`, medians of 3). This is how the Node server's client
(ioredis) talks to Redis.

The connection is made by redis-py (its AUTH, SELECT, TLS, unix sockets: whatever REDIS_URL
says), then read here: replies come back in the order the commands went out. A failure is
what redis-py would raise, so callers handle it as before: the connection lost or refused is a
ConnectionError, no reply for `timeout` seconds a TimeoutError (the connection is dropped: a
stalled Redis fails every call waiting on it), an error reply a ResponseError. As the pool's
client does, a call that fails for the connection is tried once more on a new one (every
script sent here may run twice: a compare-and-set or an idempotent pairing step). The pool's
settings include TCP keepalive (redis-py's default): a connection that went silent while no
event came is closed by the kernel within 45 s, and the next call makes a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any, Final

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRY_DELAY_SECONDS: Final = 0.02  # as the pool client's first backoff step
_INCOMPLETE: Final = object()

Arg = str | bytes | int


def pack(args: Sequence[Arg]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class Push(list[Any]):
    """A RESP3 push (out of band: an answer to no command)."""


def parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply (RESP2, or RESP3 as redis-py 8 speaks) from `pos`: (value, next position), or
    (_INCOMPLETE, pos). Values are what redis-py gives without decoding: bytes, int, None,
    lists; an error reply is a ResponseError, raised by the caller (inside an array, it stays
    a value, as in redis-py)."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buffer[pos]
    line = bytes(buffer[pos + 1 : end])
    after = end + 2
    if kind in _BLOBS:  # $ bulk string, = verbatim string, ! blob error
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, pos
        blob = bytes(buffer[after : after + size])
        after += size + 2
        if kind == 0x21:
            return _error(blob.decode(errors="replace")), after
        return (blob[4:] if kind == 0x3D else blob), after
    if kind == 0x3A or kind == 0x28:  # : integer, ( big number
        return int(line), after
    if kind in _AGGREGATES:  # * array, ~ set, > push, % map, | attribute
        count = int(line)
        if count < 0:
            return None, after
        items: list[Any] = Push() if kind == 0x3E else []
        for _ in range(count * 2 if kind in (0x25, 0x7C) else count):
            item, after = parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        if kind == 0x25:
            return dict(zip(items[::2], items[1::2], strict=True)), after
        if kind == 0x7C:  # attributes come before the reply they describe
            return parse(buffer, after) if after < len(buffer) else (_INCOMPLETE, pos)
        return items, after
    if kind == 0x2B:  # + simple string
        return line, after
    if kind == 0x2D:  # - error
        return _error(line.decode(errors="replace")), after
    if kind == 0x5F:  # _ null
        return None, after
    if kind == 0x23:  # # boolean
        return line == b"t", after
    if kind == 0x2C:  # , double
        return float(line), after
    raise RedisConnectionError(f"Protocol error: unexpected reply type {chr(kind)!r}")


_BLOBS: Final = frozenset(b"$=!")
_AGGREGATES: Final = frozenset(b"*~>%|")


class _Pipe(asyncio.Protocol):
    """The connection once made: commands written at once, replies matched in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.buffer = bytearray()
        self.broken: RedisError | None = None
        self._watch: asyncio.TimerHandle | None = None
        # Commands sent during one turn of the loop, written together at its end: one write
        # system call (and one wake-up of Redis) for the pairings of a turn, not one each.
        self._out: list[bytes] = []
        self._flush: asyncio.Handle | None = None

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.transport = transport
        transport.set_protocol(self)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.broken is not None or self.transport is None:
            future.set_exception(self.broken or RedisConnectionError("Redis lane closed"))
            return future
        self.waiting.append((future, loop.time()))
        self._out.append(command)
        if self._flush is None:
            self._flush = loop.call_soon(self._write)
        if self._watch is None:
            self._watch = loop.call_later(self.timeout, self._check)
        return future

    def _write(self) -> None:
        self._flush = None
        out, self._out = self._out, []
        if self.transport is not None and self.broken is None and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check(self) -> None:
        """No reply for `timeout` seconds to the oldest command: Redis stalls (or the network
        does); every call waiting here fails, as each would on its own connection."""
        self._watch = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        overdue = self.waiting[0][1] + self.timeout - loop.time()
        if overdue > 0:
            self._watch = loop.call_later(overdue, self._check)
            return
        self._fail(RedisTimeoutError("Timeout reading from Redis (lane)"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        waiting = self.waiting
        try:
            while pos < len(buffer):
                value, after = parse(buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = after
                if type(value) is Push:
                    continue  # not a reply
                if not waiting:
                    raise RedisConnectionError("Protocol error: a reply nobody asked for")
                future, _ = waiting.popleft()
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(value, ResponseError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (RedisConnectionError, ValueError) as exc:
            self._fail(exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: RedisError) -> None:
        if self.broken is None:
            self.broken = error
        for handle in (self._watch, self._flush):
            if handle is not None:
                handle.cancel()
        self._watch = self._flush = None
        self._out = []
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError("Redis lane closed"))


class Lane:
    """Commands to Redis down one connection, made (again) when first needed."""

    def __init__(self, redis: aioredis.Redis, timeout: float) -> None:
        self._pool = redis.connection_pool
        self._timeout = timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Task[_Pipe] | None = None
        self._closed = False

    async def call(self, *args: Arg) -> Any:
        """One command; its reply as redis-py gives it undecoded, or what redis-py raises."""
        command = pack(args)
        try:
            return await self._send(command)
        except (RedisConnectionError, RedisTimeoutError):
            if self._closed:
                raise
            await asyncio.sleep(RETRY_DELAY_SECONDS)
            return await self._send(command)

    async def _send(self, command: bytes) -> Any:
        pipe = self._pipe
        if pipe is None or pipe.broken is not None:
            pipe = await self._connected()
        return await pipe.send(command)

    async def _connected(self) -> _Pipe:
        """The pipe, made by one caller while the others wait for it."""
        if self._closed:
            raise RedisConnectionError("Redis lane closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            # Its failure is each waiter's to raise; with every waiter cancelled, nobody's.
            self._connecting.add_done_callback(_retrieved)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Pipe:
        """A connection made as the pool makes its own (AUTH, SELECT, TLS, CLIENT SETINFO),
        then read by a _Pipe."""
        pool = self._pool
        connection = pool.connection_class(**pool.connection_kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except OSError as exc:  # redis-py raises its own errors; anything else as they are
            raise RedisConnectionError(str(exc)) from exc
        reader = getattr(connection, "_reader", None)
        writer = getattr(connection, "_writer", None)
        if writer is None or reader is None or len(getattr(reader, "_buffer", b"")):
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()
            raise RedisConnectionError("Redis lane: redis-py's connection is not a stream")
        # redis-py forgets the stream (its __del__ would close it); the pipe keeps the writer,
        # whose __del__ closes a transport still open.
        connection._reader = connection._writer = None
        pipe = _Pipe(self._timeout)
        pipe.attach(writer)
        if self._closed:
            pipe.close()
        self._pipe = pipe
        return pipe

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._pipe is not None:
            self._pipe.close()


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Script:
    """A Lua script run with EVALSHA, as redis-py's registered scripts are called: sent in full
    (EVAL, which caches it) when Redis does not know it (restarted, or SCRIPT FLUSH)."""

    def __init__(self, lane: Lane, source: str) -> None:
        self._lane = lane
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self._lane.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._lane.call("EVAL", self.source, len(keys), *keys, *args)
