"""Several server processes behind HAProxy (deploy/haproxy.cfg), polling-first clients.

Three server processes share one Redis behind HAProxy, configured from the repository's
template with only the listening port and the `server` lines replaced. The real Node
socket.io-client connects through the proxy polling first, like the apps: some clients stay on
long-polling for the whole test, others upgrade to WebSocket. Every request of one Engine.IO
session must reach the process that created it (stickiness by `sid`); the test proves that from
HAProxy's own request log, and that the sessions were spread over several processes.

Codes, sessions, presence and pushes are shared through Redis: a tracked app and its trackers
pair through the proxy wherever each lands, and hear each other across processes.

Needs the `haproxy` binary (Debian's package; scripts/test.sh installs it as root); skipped,
saying so, where it is missing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.flows import expect_error, instance_of, new_code, only, pair, unknown_token
from tests.support.metrics import scrape, total
from tests.support.nodeclient import ConnectError, NodeClient, NodeDriver
from tests.support.processes import REPO_ROOT, ServerProcess, free_port, http_status

TEMPLATE = REPO_ROOT / "deploy" / "haproxy.cfg"
PROCESSES = 3
POLLING_ONLY = 12  # polling first and never upgrading: every event is an HTTP request
UPGRADING = 6  # polling first, then the upgrade to WebSocket through the proxy
ROUNDS = 4

pytestmark = pytest.mark.timeout(60)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )
    if found is None:
        pytest.skip(
            "haproxy is not installed, so the several-processes test cannot run: install "
            "Debian's package (`apt-get install haproxy`; scripts/test.sh does it as root)"
        )
    return found


# ------------------------------------------------------------------------ the config


BIND_RE = re.compile(r'^(\s*)bind "\*:\$\{PORT-3000\}"\s*$', re.MULTILINE)
SERVER_RE = re.compile(r"^(\s*)server s\d+ \S+:\d+.*$", re.MULTILINE)


def render(template: str, port: int, backends: list[int], *, sticky: bool = True) -> str:
    """The template with the listening port and one `server` line per backend port.
    ``sticky=False`` strips the stick rules and balances round robin: the failure mode."""
    text, binds = BIND_RE.subn(rf"\1bind 127.0.0.1:{port}", template)
    assert binds == 1, 'deploy/haproxy.cfg: expected exactly one `bind "*:${PORT-3000}"` line'
    servers = SERVER_RE.findall(text)
    assert servers, "deploy/haproxy.cfg: expected `server sN host:port` lines"
    indent = servers[0]
    lines = "\n".join(f"{indent}server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends, 1))
    first = SERVER_RE.search(text)
    assert first is not None
    text = text[: first.start()] + lines + SERVER_RE.sub("", text[first.start() :])
    if not sticky:
        assert "stick match url_param(sid)" in text
        text = re.sub(r"^\s*stick[ -].*$", "", text, flags=re.MULTILINE)
        text = text.replace("balance leastconn", "balance roundrobin")
    return text


class HAProxy:
    """haproxy in the foreground (-db) with its request log (option httplog) in a file."""

    def __init__(self, binary: str, workdir: Path, config: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.config_path = workdir / f"haproxy-{port}.cfg"
        self.config_path.write_text(config)
        self.log_path = workdir / f"haproxy-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 10.0) -> HAProxy:
        self.process = self._spawn()
        deadline = time.monotonic() + timeout
        while (status := await asyncio.to_thread(self._probe)) != 200:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"haproxy exited with {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"GET / through haproxy -> {status}:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert check.returncode == 0, f"haproxy -c refused the config:\n{check.stderr}"
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self) -> list[tuple[str, int, str]]:
        """(server, HTTP status, URI) of every /socket.io/ request logged so far."""
        line = re.compile(r' alliswell/(\S+) \S+ (-?\d+) .*"\w+ (/socket\.io/\S*) HTTP/')
        return [(m[1], int(m[2]), m[3]) for m in map(line.search, self.log().splitlines()) if m]

    def _probe(self) -> int | str:
        return http_status(self.url + "/")


@pytest.fixture
def start_proxy(tmp_path: Path, request: pytest.FixtureRequest):
    binary = haproxy_binary()
    proxies: list[HAProxy] = []

    async def start(backends: list[ServerProcess], *, sticky: bool = True) -> HAProxy:
        port = free_port()
        config = render(TEMPLATE.read_text(), port, [s.port for s in backends], sticky=sticky)
        proxy = HAProxy(binary, tmp_path, config, port)
        proxies.append(proxy)
        return await proxy.start()

    yield start
    for proxy in proxies:
        proxy.stop()
        failed = any(
            getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        if failed:
            print(f"----- {proxy.log_path.name} (tail) -----")
            print("\n".join(proxy.log().splitlines()[-60:]))


# ---------------------------------------------------------------------------- helpers


def sid_of(uri: str) -> str | None:
    match = re.search(r"[?&]sid=([^&]+)", uri)
    return match[1] if match else None


async def connections(server: ServerProcess) -> int:
    """Open Engine.IO connections of one process, from its /metrics."""
    return int(total(await scrape(server.url), "alliswell_connections"))


async def exchange(client: NodeClient) -> None:
    """Round trips that each need the client's session on the process that owns it."""
    client.emit("checkIn", unknown_token())
    await expect_error(client, "Invalid session token")
    client.emit("getStatus", {"sessionToken": unknown_token()})
    await expect_error(client, "Invalid session token")


# ------------------------------------------------------------------------------ tests


async def test_polling_first_clients_stick_to_one_process_each(
    start_server, redis_url: str, start_proxy, node: NodeDriver
) -> None:
    servers = list(
        await asyncio.gather(*(start_server(redis_url=redis_url) for _ in range(PROCESSES)))
    )
    # A session paired earlier, on one process directly (codes do not cross processes yet).
    paired = await pair(node, servers[0].url, "polling")
    await paired.tracked.disconnect()
    await paired.tracker.disconnect()

    proxy = await start_proxy(servers)

    # Many clients at once, polling first, through the proxy: every one gets connected.
    polling = await asyncio.gather(
        *(node.connect(proxy.url, "polling", upgrade=False) for _ in range(POLLING_ONLY))
    )
    upgrading = await asyncio.gather(
        *(node.connect(proxy.url, "polling") for _ in range(UPGRADING))
    )
    clients = [*polling, *upgrading]
    await asyncio.gather(*(c.wait_upgrade() for c in upgrading))

    # They stay connected and keep talking, each over many requests of its own session.
    for _ in range(ROUNDS):
        await asyncio.gather(*(exchange(c) for c in clients))
        await asyncio.sleep(0.3)
    assert all(c.connected for c in clients), [c for c in clients if not c.connected]
    assert all(c.transport == "polling" for c in polling)
    assert all(c.transport == "websocket" for c in upgrading)

    # Spread over the processes, every connection counted on exactly one of them.
    counts = await asyncio.gather(*(connections(s) for s in servers))
    assert sum(counts) == len(clients), counts
    assert sum(1 for n in counts if n > 0) >= 2, counts

    # The session token paired earlier works through the proxy, on whichever process.
    tracked = await node.connect(proxy.url, "polling")
    tracked.emit("reconnectSession", {"sessionToken": paired.token, "role": "tracked"})
    assert only(await tracked.expect("sessionReconnected")) == {
        "sessionToken": paired.token,
        "role": "tracked",
    }
    tracked.emit("checkIn", paired.token)
    await tracked.expect("checkInConfirmed")
    trackers = await asyncio.gather(*(node.connect(proxy.url, "polling") for _ in range(3)))
    for tracker in trackers:
        tracker.emit("reconnectSession", {"sessionToken": paired.token, "role": "tracker"})
        assert only(await tracker.expect("sessionReconnected"))["role"] == "tracker"

    for client in [*clients, tracked, *trackers]:
        assert client.connected, client

    await node.close()  # WebSocket tunnels are logged when they end
    await asyncio.sleep(0.3)

    # HAProxy's log: every request naming a sid went to one process, none was refused, the
    # upgrades went through, and the sessions were spread over more than one process.
    requests = proxy.requests()
    by_sid: dict[str, set[str]] = defaultdict(set)
    for server, status, uri in requests:
        assert status != 400, f"{server} refused {uri}"
        if (sid := sid_of(uri)) is not None:
            by_sid[sid].add(server)
    assert len(by_sid) >= len(clients) + 1 + len(trackers), len(by_sid)
    split = {sid: names for sid, names in by_sid.items() if len(names) > 1}
    assert not split, f"sessions served by several processes: {split}"
    assert len({next(iter(names)) for names in by_sid.values()}) >= 2
    upgrades = [uri for _, status, uri in requests if status == 101 and sid_of(uri)]
    assert len(upgrades) >= UPGRADING, upgrades


async def test_polling_first_apps_pair_and_hear_each_other_across_processes(
    start_server, redis_url: str, start_proxy, node: NodeDriver
) -> None:
    servers = list(
        await asyncio.gather(*(start_server(redis_url=redis_url) for _ in range(PROCESSES)))
    )
    await asyncio.sleep(1.5)  # every instance has seen the others' heartbeats
    proxy = await start_proxy(servers)
    tracked = await node.connect(proxy.url, "polling", upgrade=False)
    trackers = [await node.connect(proxy.url, "polling", upgrade=False) for _ in range(4)]
    places = {instance_of(c) for c in [tracked, *trackers]}
    assert len(places) >= 2, places  # leastconn spread them: pairing has to cross processes

    tracked.emit("registerCode", code := new_code())
    await tracked.expect("codeRegistered")
    tokens = set()
    for tracker in trackers:
        tracker.emit("trackCode", code)
        tokens.add(only(await tracker.expect("trackingStarted"))["sessionToken"])
        assert only(await tracked.expect("trackerConnected"))["sessionToken"] in tokens
    assert len(tokens) == 1
    token = tokens.pop()

    tracked.emit("checkIn", token)
    confirmed = only(await tracked.expect("checkInConfirmed"))["timestamp"]
    for tracker in trackers:
        received = only(await tracker.expect("checkInReceived"))
        assert received == {"sessionToken": token, "timestamp": confirmed}

    await tracked.disconnect()
    for tracker in trackers:
        assert await tracker.expect("trackedPersonDisconnected") == []
    requests = proxy.requests()
    assert all(status != 400 for _, status, _ in requests), requests


async def test_without_stickiness_polling_clients_are_refused(
    start_server, start_proxy, node: NodeDriver
) -> None:
    """The failure mode the stick table prevents: round robin sends the second request of
    a session to the other process, which answers `400 Invalid session`."""
    servers = list(await asyncio.gather(start_server(), start_server()))
    proxy = await start_proxy(servers, sticky=False)
    with pytest.raises(ConnectError):
        await node.connect(proxy.url, "polling")
    # The same processes, addressed directly, are fine.
    direct = await node.connect(servers[0].url, "polling")
    await exchange(direct)
    await asyncio.sleep(0.2)
    assert any(status == 400 for _, status, _ in proxy.requests()), proxy.log()
