"""Drive headless Chromium (Debian's, at /usr/bin/chromium) from asyncio tests.

One ``Browser`` is one ``node tests/node/browser.js`` process (playwright-core) with one browser
context; ``await browser.open("a", url)`` opens a tab and returns a ``Tab``::

    browser = Browser(user_data_dir)
    await browser.start()
    tab = await browser.open("tracked", "http://127.0.0.1:3000/demo")
    await tab.click("#register")
    text = await tab.wait("#log li[data-event=codeRegistered]")
    await browser.close()
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

from tests.support.nodeclient import NODE_DIR

BROWSER_JS = NODE_DIR / "browser.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


class BrowserError(RuntimeError):
    """The driver died, or a command failed in the page."""


class Tab:
    def __init__(self, browser: Browser, name: str) -> None:
        self._browser = browser
        self.name = name

    async def click(self, selector: str) -> None:
        await self._browser.call("click", page=self.name, selector=selector)

    async def fill(self, selector: str, value: str) -> None:
        await self._browser.call("fill", page=self.name, selector=selector, value=value)

    async def wait(self, selector: str, timeout: float = 5.0) -> str:
        """The text of the first element matching ``selector``, once it is visible."""
        return str(
            await self._browser.call(
                "wait",
                page=self.name,
                selector=selector,
                timeout=int(timeout * 1000),
                within=timeout + 5,
            )
        )

    async def text(self, selector: str) -> str:
        return str(await self._browser.call("text", page=self.name, selector=selector))

    async def eval(self, expression: str) -> Any:
        return await self._browser.call("eval", page=self.name, expression=expression)


class Browser:
    def __init__(self, user_data_dir: Path) -> None:
        self.user_data_dir = user_data_dir
        self.console: list[tuple[str, str]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seqs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._stderr: deque[str] = deque(maxlen=100)

    async def start(self, timeout: float = 15.0) -> None:
        node = shutil.which("node")
        if node is None or shutil.which(CHROMIUM) is None:
            raise BrowserError(f"needs node and Chromium at {CHROMIUM} (apt-get install chromium)")
        env = {**os.environ, "CHROMIUM": CHROMIUM, "USER_DATA_DIR": str(self.user_data_dir)}
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(BROWSER_JS),
            cwd=str(NODE_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(timeout):
                await self._ready
        except TimeoutError:
            await self.close()
            raise BrowserError(f"Chromium did not start: {self.stderr_tail()}") from None

    async def open(self, name: str, url: str) -> Tab:
        await self.call("open", page=name, url=url)
        return Tab(self, name)

    async def call(self, op: str, *, within: float = 10.0, **fields: Any) -> Any:
        assert self._proc is not None and self._proc.stdin is not None, "browser not started"
        seq = next(self._seqs)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        line = json.dumps({"op": op, "seq": seq, **fields}) + "\n"
        self._proc.stdin.write(line.encode())
        try:
            async with asyncio.timeout(within):
                return await future
        finally:
            self._pending.pop(seq, None)

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(b'{"op":"exit"}\n')
                proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stderr = asyncio.create_task(self._read_stderr())
        try:
            async for raw in self._proc.stdout:
                report = json.loads(raw)
                kind = report.get("type")
                if kind == "ready" and self._ready is not None and not self._ready.done():
                    self._ready.set_result(report)
                elif kind == "console":
                    self.console.append((report["page"], report["text"]))
                elif kind in ("result", "error"):
                    future = self._pending.get(report.get("seq"))
                    if future is None or future.done():
                        continue
                    if kind == "result":
                        future.set_result(report["value"])
                    else:
                        future.set_exception(BrowserError(report["message"]))
        finally:
            stderr.cancel()
            error = BrowserError(f"browser driver exited: {self.stderr_tail()}")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(error)

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())
