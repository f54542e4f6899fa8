"""Engine.IO v4 conformance, over raw HTTP and WebSocket against the real server.

Each test quotes the rule it checks from the spec (the README of socketio/engine.io-protocol,
"the 4th version of the Engine.IO protocol") and follows the matching test of its test suite
(`test-suite/test-suite.js`). That suite (mocha, run with its URL, path and heartbeat constants
set to this server's) passes on the 12 tests that apply to a server that does not echo Engine.IO
messages; these are their behaviours, kept here because the suite is not part of this repository.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from server import errors
from tests.conftest import StartServer
from tests.support.processes import ServerProcess

MAX_MESSAGE_BYTES = 1_000_000
# A pending poll waits up to the ping interval; the second request goes this long after it,
# so that the first one is surely waiting at the server.
SETTLE = 0.5


@pytest.fixture(params=["lean", "stock"])
def websocket_driver(request: pytest.FixtureRequest) -> str:
    """Run on engine.io's stock WebSocket driver too (WEBSOCKET_DRIVER=stock, the way back)."""
    return str(request.param)


@pytest.fixture
async def server(start_server: StartServer) -> ServerProcess:
    """The server as the suite was run against it: default heartbeat, 1 MB messages."""
    return await start_server(MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def endpoint(server: ServerProcess, query: str = "EIO=4&transport=polling") -> str:
    return f"{server.url}/socket.io/?{query}"


async def open_polling(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with http.get(endpoint(server)) as response:
        assert response.status == 200
        content = await response.text()
    assert content.startswith("0")
    return str(json.loads(content[1:])["sid"])


async def status_of(request: object) -> int:
    async with request as response:  # type: ignore[attr-defined]
        await response.read()
        return int(response.status)


async def test_a_session_opens_with_the_handshake_the_spec_lists(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "If the server accepts the connection, then it MUST respond with an `open` packet with
    the following JSON-encoded payload: sid, upgrades, pingInterval, pingTimeout, maxPayload"
    (suite: handshake, "successfully opens a session", both transports)."""
    async with http.get(endpoint(server)) as response:
        assert response.status == 200
        content = await response.text()
    assert content.startswith("0")
    handshake = json.loads(content[1:])
    assert set(handshake) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert handshake["upgrades"] == ["websocket"]
    assert (handshake["pingInterval"], handshake["pingTimeout"]) == (25_000, 20_000)
    assert handshake["maxPayload"] == MAX_MESSAGE_BYTES
    ws_url = endpoint(server, "EIO=4&transport=websocket").replace("http", "ws", 1)
    async with http.ws_connect(ws_url) as ws:
        data = await asyncio.wait_for(ws.receive_str(), 5)
    assert data.startswith("0")
    handshake = json.loads(data[1:])
    assert set(handshake) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert handshake["upgrades"] == []


async def test_a_request_without_a_valid_eio_or_transport_is_a_400(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "`transport` | `polling` | Mandatory, the name of the transport." ... "If a mandatory
    query parameter is missing, then the server MUST respond with an HTTP 400 error status."
    (suite: "fails with an invalid 'EIO' query parameter", "... 'transport' query parameter").
    engine.io took a missing transport for polling and answered 200."""
    for query in ("transport=polling", "EIO=abc&transport=polling", "EIO=4", "EIO=4&transport=abc"):
        assert await status_of(http.get(endpoint(server, query))) == 400, query
    ws_url = endpoint(server, "EIO=4").replace("http", "ws", 1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url)
    assert refused.value.status == 400


async def test_a_method_other_than_get_post_or_options_is_a_400(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "The server MUST return an HTTP 400 response if the session ID (from the `sid` query
    parameter) is not known." (suite: "fails with an invalid request method": a POST without a
    session, and a PUT, are both 400; aiohttp's router answered the PUT 405.) OPTIONS (CORS
    preflight) is still answered."""
    url = endpoint(server)
    assert await status_of(http.post(url)) == 400
    for method in ("PUT", "DELETE", "PATCH"):
        assert await status_of(http.request(method, url)) == 400, method
    assert await status_of(http.options(url, headers={"Origin": "https://a.example"})) == 200


async def test_an_invalid_payload_on_polling_is_a_400_and_closes_the_session(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """Suite: "closes the session upon invalid packet format": a POST of `abc` is answered 400
    and the next poll of that session 400. engine.io answered 200 (with a traceback in the
    log) and kept the session. A pending poll of the session ends with the CLOSE packet."""
    sid = await open_polling(http, server)
    url = f"{endpoint(server)}&sid={sid}"
    pending = asyncio.create_task(http.get(url))
    await asyncio.sleep(SETTLE)
    assert await status_of(http.post(url, data="abc")) == 400
    async with await asyncio.wait_for(pending, 5) as response:
        assert (response.status, await response.text()) == (200, "1")
    assert await status_of(http.get(url)) == 400
    assert "Traceback" not in server.log_text()


async def test_a_valid_payload_carrying_a_malformed_socket_io_packet_keeps_the_session(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """The Engine.IO rule above is about the Engine.IO framing only: a well-framed MESSAGE
    whose Socket.IO content is bad still gets the `error` event of PROTOCOL.md."""
    sid = await open_polling(http, server)
    url = f"{endpoint(server)}&sid={sid}"
    assert await status_of(http.post(url, data="40")) == 200
    async with http.get(url) as response:
        assert (await response.text()).startswith("40")
    assert await status_of(http.post(url, data="42[")) == 200
    async with http.get(url) as response:
        assert await response.text() == f'42["error","{errors.MALFORMED_PACKET}"]'


async def test_a_second_concurrent_poll_is_a_400_and_closes_the_session(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "To ensure packet ordering, a client MUST NOT have more than one active `GET` request.
    Should it happen, the server MUST return an HTTP 400 error status and close the session."
    (suite: "closes the session upon duplicate poll requests": the first poll gets the CLOSE
    packet `1`, the second 400, a later one 400). engine.io let both wait."""
    sid = await open_polling(http, server)
    url = f"{endpoint(server)}&sid={sid}"
    first = asyncio.create_task(http.get(url))
    await asyncio.sleep(SETTLE)
    assert await status_of(http.get(url + "&t=burst")) == 400
    async with await asyncio.wait_for(first, 5) as response:
        assert (response.status, await response.text()) == (200, "1")
    assert await status_of(http.get(url)) == 400


async def test_a_client_close_on_polling_ends_the_pending_poll_with_a_noop(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "close | 1 | Used to indicate that a transport can be closed." (suite: close, HTTP
    long-polling, "forcefully closes the session": the pending poll is answered `6`, a NOOP,
    and the next poll 400). The poll was answered with an empty body."""
    sid = await open_polling(http, server)
    url = f"{endpoint(server)}&sid={sid}"
    pending = asyncio.create_task(http.get(url))
    await asyncio.sleep(SETTLE)
    assert await status_of(http.post(url, data="1")) == 200
    async with await asyncio.wait_for(pending, 5) as response:
        assert (response.status, await response.text()) == (200, "6")
    assert await status_of(http.get(url)) == 400


async def test_an_upgrade_is_not_a_second_poll_and_ends_the_pending_one_with_a_noop(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """ "The server MUST: send a `noop` packet to any pending `GET` request (if applicable) to
    cleanly close HTTP long-polling transport; respond with a `pong` packet with the string
    `probe` in the payload" (suite: "successfully upgrades from HTTP long-polling to WebSocket";
    the WebSocket's GET must not count as a duplicate poll)."""
    sid = await open_polling(http, server)
    url = f"{endpoint(server)}&sid={sid}"
    assert await status_of(http.post(url, data="40")) == 200
    async with http.get(url) as response:
        assert (await response.text()).startswith("40")
    pending = asyncio.create_task(http.get(url))
    await asyncio.sleep(SETTLE)
    ws_url = endpoint(server, f"EIO=4&transport=websocket&sid={sid}").replace("http", "ws", 1)
    async with http.ws_connect(ws_url) as ws:
        await ws.send_str("2probe")
        assert await asyncio.wait_for(ws.receive_str(), 5) == "3probe"
        async with await asyncio.wait_for(pending, 5) as response:
            assert (response.status, await response.text()) == (200, "6")
        await ws.send_str("5")
        await ws.send_str('42["getStatus",{"token":"nope"}]')
        reply = await asyncio.wait_for(ws.receive_str(), 5)
        while reply in ("2", "6"):
            reply = await asyncio.wait_for(ws.receive_str(), 5)
        assert reply.startswith('42["error"'), reply
        assert await status_of(http.get(url)) == 400  # "ignores HTTP requests ... after upgrade"


async def test_on_websocket_an_invalid_packet_or_a_client_close_closes_the_connection(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """Suite: "closes the session upon invalid packet format" and "forcefully closes the
    session" on WebSocket: after `abc`, or the CLOSE packet `1`, the server closes the
    WebSocket (the Node server waits for the client to close it)."""
    ws_url = endpoint(server, "EIO=4&transport=websocket").replace("http", "ws", 1)
    for packet in ("abc", "1"):
        async with http.ws_connect(ws_url) as ws:
            assert (await asyncio.wait_for(ws.receive_str(), 5)).startswith("0")
            await ws.send_str(packet)
            message = await asyncio.wait_for(ws.receive(), 5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), packet
