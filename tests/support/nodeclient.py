"""Drive the server with the real Node socket.io-client, from asyncio tests.

One ``NodeDriver`` is one ``node tests/node/driver.js`` process; it manages any number of
sockets, each wrapped in a ``NodeClient``::

    driver = NodeDriver()
    await driver.start()
    tracked = await driver.connect(server.url)                  # polling first, then upgrade
    tracker = await driver.connect(server.url, transport="websocket")
    tracked.emit("registerCode", "123456")
    (payload,) = await tracked.expect("codeRegistered")
    await driver.close()

Every event the server sends is buffered per socket, so an event that arrives before the test
asks for it is never lost. ``expect`` consumes occurrences of one event name in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections import deque
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
DRIVER_JS = NODE_DIR / "driver.js"

TRANSPORTS = {
    # What the apps in the field do: start with long-polling, upgrade to websocket.
    "polling": ["polling", "websocket"],
    # Straight to websocket, no polling at all.
    "websocket": ["websocket"],
}


class DriverError(RuntimeError):
    """The Node driver died or refused a command."""


class ConnectError(RuntimeError):
    """The socket reported connect_error instead of connect."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class NodeClient:
    """One socket.io-client socket living in the Node driver."""

    def __init__(self, driver: NodeDriver, client_id: str, url: str) -> None:
        self._driver = driver
        self.id = client_id
        self.url = url
        self.sid: str | None = None
        self.transport: str | None = None
        self.connected = False
        # Every server event in arrival order: (event, args).
        self.log: list[tuple[str, list[Any]]] = []
        self._events: dict[str, list[list[Any]]] = {}
        self._consumed: dict[str, int] = {}
        self._connects: list[dict[str, Any]] = []
        self._connect_errors: list[dict[str, Any]] = []
        self._disconnects: list[str] = []
        self._disconnects_consumed = 0
        self._acks: dict[int, list[Any]] = {}
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"<NodeClient {self.id} sid={self.sid} transport={self.transport}>"

    # ----------------------------------------------------------------- sending

    def emit(self, event: str, *args: Any) -> None:
        """Send an event and return at once. ``emit("x")`` sends no payload at all,
        ``emit("x", None)`` sends a null payload."""
        self._driver._send({"op": "emit", "id": self.id, "event": event, "args": list(args)})

    def emit_json(self, event: str, args_json: str) -> None:
        """``emit`` with the arguments given as a JSON array's text, for payloads json.dumps
        cannot write: CPython 3.12's C encoder stops near 1,000 levels of nesting, whatever
        sys.getrecursionlimit() says."""
        head = json.dumps({"op": "emit", "id": self.id, "event": event})
        self._driver._write_line(f'{head[:-1]}, "args": {args_json}}}')

    async def call(self, event: str, *args: Any, timeout: float = 5.0) -> list[Any]:
        """Emit with an acknowledgement callback and return the ack's arguments."""
        ack = next(self._driver._ack_ids)
        self._driver._send(
            {"op": "emit", "id": self.id, "event": event, "args": list(args), "ack": ack}
        )
        await self._wait(lambda: ack in self._acks, timeout, f"ack for {event!r}")
        return self._acks.pop(ack)

    # --------------------------------------------------------------- receiving

    def received(self, event: str) -> list[list[Any]]:
        """Args of every occurrence of ``event`` received so far (consumed or not)."""
        return [list(args) for args in self._events.get(event, [])]

    def events(self) -> list[str]:
        """Names of every server event received so far, in arrival order."""
        return [name for name, _ in self.log]

    async def expect(self, event: str, timeout: float = 5.0) -> list[Any]:
        """Args of the next not-yet-consumed occurrence of ``event``; waits for it."""

        def available() -> bool:
            return len(self._events.get(event, [])) > self._consumed.get(event, 0)

        await self._wait(available, timeout, f"event {event!r}")
        index = self._consumed.get(event, 0)
        self._consumed[event] = index + 1
        return self._events[event][index]

    async def expect_none(self, event: str, within: float = 0.5) -> None:
        """Assert that no unconsumed occurrence of ``event`` is buffered now or arrives
        within ``within`` seconds."""

        def available() -> bool:
            return len(self._events.get(event, [])) > self._consumed.get(event, 0)

        with contextlib.suppress(TimeoutError):
            await self._wait(available, within, f"event {event!r}", raise_timeout=True)
        if available():
            extra = self._events[event][self._consumed.get(event, 0) :]
            raise AssertionError(
                f"{self.id}: expected no {event!r} event, got {extra!r}; all events: {self.log!r}"
            )

    # ------------------------------------------------------------- lifecycle

    async def wait_connect(self, timeout: float = 10.0) -> str:
        """Wait for the first connect (or raise ConnectError); return the socket id."""
        await self._wait(lambda: bool(self._connects or self._connect_errors), timeout, "connect")
        if not self._connects:
            err = self._connect_errors[0]
            raise ConnectError(err.get("message") or "connect_error", err.get("data"))
        assert self.sid is not None
        return self.sid

    async def wait_disconnect(self, timeout: float = 5.0) -> str:
        """Wait for the next disconnect of this socket; return its reason string
        (e.g. "io server disconnect", "transport close", "io client disconnect")."""
        await self._wait(
            lambda: len(self._disconnects) > self._disconnects_consumed, timeout, "disconnect"
        )
        reason = self._disconnects[self._disconnects_consumed]
        self._disconnects_consumed += 1
        return reason

    async def disconnect(self, timeout: float = 5.0) -> str:
        """Client-side ``socket.disconnect()``; returns the reason ("io client disconnect")."""
        if not self.connected:
            raise AssertionError(f"{self.id} is not connected")
        self._driver._send({"op": "disconnect", "id": self.id})
        return await self.wait_disconnect(timeout)

    async def wait_upgrade(self, timeout: float = 5.0) -> str:
        """Wait until the Engine.IO transport is websocket; return its name."""
        await self._wait(lambda: self.transport == "websocket", timeout, "upgrade to websocket")
        assert self.transport is not None
        return self.transport

    async def kill_transport(self, timeout: float = 5.0) -> str:
        """Drop the connection abruptly, like a phone losing its network: the TCP
        connection of the websocket transport is destroyed without a close frame, so the
        server sees a transport close. A polling-first socket is first given time to
        upgrade. Returns the client's own disconnect reason."""
        if self.transport != "websocket":
            await self.wait_upgrade(timeout)
        await self._driver._command({"op": "close_transport", "id": self.id, "how": "abort"})
        return await self.wait_disconnect(timeout)

    async def close_engine(self, timeout: float = 5.0) -> str:
        """``socket.io.engine.close()``: closes the Engine.IO connection under the socket
        without a Socket.IO disconnect packet. Returns the client's disconnect reason."""
        await self._driver._command({"op": "close_transport", "id": self.id, "how": "close"})
        return await self.wait_disconnect(timeout)

    # -------------------------------------------------------------- internals

    async def _wait(
        self, predicate: Any, timeout: float, what: str, raise_timeout: bool = False
    ) -> None:
        async def until() -> None:
            async with self._changed:
                while not predicate():
                    self._driver._check_alive()
                    await self._changed.wait()

        try:
            async with asyncio.timeout(timeout):
                await until()
        except TimeoutError:
            if raise_timeout:
                raise
            raise AssertionError(
                f"{self.id}: timed out after {timeout} s waiting for {what}; "
                f"connected={self.connected} transport={self.transport} "
                f"events so far: {self.log!r}; disconnects: {self._disconnects!r}"
            ) from None

    def _handle(self, report: dict[str, Any]) -> None:
        kind = report["type"]
        if kind == "event":
            event, args = report["event"], report.get("args") or []
            self.log.append((event, args))
            self._events.setdefault(event, []).append(args)
        elif kind == "connect":
            self.connected = True
            self.sid = report.get("sid")
            self.transport = report.get("transport")
            self._connects.append(report)
        elif kind == "connect_error":
            self._connect_errors.append(report)
        elif kind == "disconnect":
            self.connected = False
            self._disconnects.append(report.get("reason") or "")
        elif kind == "upgrade":
            self.transport = report.get("transport")
        elif kind == "ack":
            self._acks[report["ack"]] = report.get("args") or []

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class NodeDriver:
    """The ``node driver.js`` process and the sockets it manages."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node or shutil.which("node") or "node"
        self.version: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._clients: dict[str, NodeClient] = {}
        self._ids = itertools.count(1)
        self._ack_ids = itertools.count(1)
        self._seqs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: deque[str] = deque(maxlen=200)
        self._stderr_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._dead = False

    @property
    def clients(self) -> list[NodeClient]:
        return list(self._clients.values())

    async def start(self, timeout: float = 10.0) -> None:
        if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
            raise DriverError(
                f"socket.io-client is not installed in {NODE_DIR}; run `npm ci` there"
            )
        env = dict(os.environ)
        env.pop("DEBUG", None)  # keep the debug package of socket.io-client quiet
        self._proc = await asyncio.create_subprocess_exec(
            self.node,
            str(DRIVER_JS),
            cwd=str(NODE_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._read_stderr())
        try:
            async with asyncio.timeout(timeout):
                ready = await self._ready
        except TimeoutError:
            await self.close()
            raise DriverError(f"node driver did not start: {self.stderr_tail()}") from None
        self.version = ready.get("version")

    async def connect(
        self,
        url: str,
        transport: str = "polling",
        *,
        timeout: float = 10.0,
        wait: bool = True,
        **opts: Any,
    ) -> NodeClient:
        """Open a socket to ``url`` and wait for ``connect`` (ConnectError on connect_error).

        transport="polling": polling first, upgrade to websocket (the apps' default).
        transport="websocket": websocket only.
        Other keyword arguments are socket.io-client options (camelCase, e.g. ``auth``,
        ``query``, ``extraHeaders``); ``reconnection`` defaults to False here.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, not {transport!r}")
        client_id = f"s{next(self._ids)}"
        client = NodeClient(self, client_id, url)
        self._clients[client_id] = client
        options: dict[str, Any] = {"transports": TRANSPORTS[transport], "reconnection": False}
        options.update(opts)
        self._send({"op": "connect", "id": client_id, "url": url, "opts": options})
        if wait:
            await client.wait_connect(timeout)
        return client

    async def close(self) -> None:
        """Disconnect every socket and stop the Node process."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                self._send({"op": "exit"})
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    async with asyncio.timeout(2):
                        await task
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        self._proc = None

    def stderr_tail(self) -> str:
        return "".join(self._stderr)

    # -------------------------------------------------------------- internals

    def _send(self, command: dict[str, Any]) -> None:
        self._write_line(json.dumps(command))

    def _write_line(self, text: str) -> None:
        self._check_alive()
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write((text + "\n").encode())

    async def _command(self, command: dict[str, Any], timeout: float = 5.0) -> None:
        """Send a command and wait until the driver has carried it out."""
        seq = next(self._seqs)
        future = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        self._send({**command, "seq": seq})
        try:
            async with asyncio.timeout(timeout):
                result = await future
        finally:
            self._pending.pop(seq, None)
        if result.get("error"):
            raise DriverError(f"{command['op']} failed: {result['error']}")

    def _check_alive(self) -> None:
        if self._dead or self._proc is None:
            raise DriverError(f"the node driver is not running; stderr: {self.stderr_tail()}")

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        errors: dict[int, str] = {}
        try:
            while line := await self._proc.stdout.readline():
                try:
                    report = json.loads(line)
                except ValueError:
                    self._stderr.append(f"[stdout, not JSON] {line.decode(errors='replace')}")
                    continue
                kind = report.get("type")
                if kind == "ready":
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(report)
                    continue
                if kind == "error":
                    self._stderr.append(f"[driver error] {report}\n")
                    if report.get("seq") is not None:
                        errors[report["seq"]] = report.get("message") or "error"
                    continue
                if kind == "done":
                    seq = report.get("seq")
                    future = self._pending.get(seq)
                    if future is not None and not future.done():
                        future.set_result({"error": errors.pop(seq, None)})
                    continue
                client = self._clients.get(report.get("id"))
                if client is not None:
                    client._handle(report)
                    await client._notify()
        finally:
            self._dead = True
            for future in self._pending.values():
                if not future.done():
                    future.set_result({"error": "driver exited"})
            for client in self._clients.values():
                await client._notify()

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace"))
