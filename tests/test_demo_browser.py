"""The demo page in a real browser: headless Chromium, two tabs, one of them on another origin.

The tracked person's tab is the server's own /demo page; the tracker's tab is a page on a
different origin that embeds the demo script, so its polling requests are cross-origin (CORS).
Both connect polling first and then upgrade, like the apps.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server.demo import STATIC
from tests.support.browser import Browser
from tests.support.nodeclient import NODE_DIR
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(60)

NPM_BUILD = NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"

EMBEDDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Someone else's page</title>
<link rel="icon" href="data:,"></head>
<body>
<div id="all-is-well-demo"></div>
<script src="{server}/demo/socket.io.min.js"></script>
<script src="{server}/demo/demo.js"></script>
</body></html>
"""

ServeEmbedding = Callable[[str], Awaitable[str]]


@pytest.fixture
async def browser(node_modules: Path, tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh profile; closed at the end of the test."""
    if not (node_modules / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is missing: run `npm ci` in {NODE_DIR}", pytrace=False)
    driver = Browser(tmp_path / "chromium-profile")
    await driver.start()
    yield driver
    await driver.close()
    if driver.console:
        print("----- browser console -----")
        print("\n".join(f"[{page}] {text}" for page, text in driver.console))


@pytest.fixture
async def other_origin() -> AsyncIterator[ServeEmbedding]:
    """Factory: ``await other_origin(server_url)`` serves a page embedding the demo from
    ``server_url`` on another port (another origin) and returns its URL."""
    runners: list[web.AppRunner] = []

    async def serve(server_url: str) -> str:
        async def embedding(request: web.Request) -> web.Response:
            return web.Response(
                text=EMBEDDING_PAGE.format(server=server_url), content_type="text/html"
            )

        app = web.Application()
        app.router.add_get("/", embedding)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/"

    yield serve
    for runner in runners:
        await runner.cleanup()


def entry(event: str) -> str:
    return f'#log li[data-event="{event}"]'


async def test_two_tabs_pair_check_in_and_see_a_missed_check_in(server, browser, other_origin):
    page_url = await other_origin(server.url)
    assert page_url.split("/")[2] != server.url.split("/")[2]  # another origin, CORS applies

    tracked = await browser.open("tracked", f"{server.url}/demo")
    tracker = await browser.open("tracker", page_url)
    for tab in (tracked, tracker):
        assert "connected over" in await tab.wait("#connection[data-transport]")

    await tracked.click("#register")
    code = await tracked.wait("#code:not(:empty)")
    assert re.fullmatch(r"\d{6}", code), code

    await tracker.fill("#track-code", code)
    await tracker.click("#track")
    assert "Paired" in await tracker.wait(entry("trackingStarted"))
    assert "paired with you" in await tracked.wait(entry("trackerConnected"))

    await tracked.click("#check-in")
    assert "confirmed" in await tracked.wait(entry("checkInConfirmed"))
    assert "checked in" in await tracker.wait(entry("checkInReceived"))

    # An alert 0.3 s after the next check-in: the tracker's tab shows it on its own.
    await tracked.fill("#reminder", "0.002")
    await tracked.fill("#alert", "0.005")
    await tracked.click("#set-timers")
    await tracked.wait(entry("timersSet"))
    await tracked.click("#check-in")
    assert "Missed check-in" in await tracker.wait(entry("alert"), timeout=8)

    for tab in (tracked, tracker):
        transports = await tab.eval("window.allIsWellDemo.transports")
        assert transports[0] == "polling", transports  # polling first, like the apps
        assert await tab.eval("document.querySelectorAll('#log li[data-event=error]').length") == 0
    assert not [text for _, text in browser.console if "Error" in text], browser.console


async def test_a_page_on_an_origin_the_server_does_not_allow_cannot_connect(
    start_server, browser, other_origin
):
    server = await start_server(CORS_ORIGINS="https://app.example.com")
    page_url = await other_origin(server.url)

    tab = await browser.open("stranger", page_url)

    assert "cannot connect" in await tab.wait("#connection[data-error]")
    assert await tab.eval("window.allIsWellDemo.socket.connected") is False


async def test_the_demo_page_serves_the_socket_io_client_from_the_npm_lockfile(server):
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/socket.io-client"]["version"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/demo") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            page = await response.text()
        async with http.get(f"{server.url}/demo/socket.io.min.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/javascript")
            served = await response.read()
        async with http.get(f"{server.url}/demo/settings.py") as response:
            assert response.status == 404

    assert '<script src="/demo/socket.io.min.js">' in page and "//cdn" not in page
    # The committed copy is the lockfile's package, byte for byte (scripts/vendor-socketio.sh).
    assert served == (STATIC / "socket.io.min.js").read_bytes() == NPM_BUILD.read_bytes()
    assert f"Socket.IO v{version}".encode() in served[:100]
