"""One app of a chaos run: a real python-socketio client following its planned steps and
writing down everything it sent and received."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import socketio

from .chaos_history import CONNECT, CONNECT_FAILED, DISCONNECT, RECV, REPLIES, RUN, SENT, Entry
from .chaos_plan import Act, ClientPlan, Role, Step

REPLY_SECONDS: Final = 6.0
_TRANSPORTS: Final = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class World:
    """What the clients of one run share: where the instances are, and the codes the tracked
    apps have shown (a person reads their code out to a tracker)."""

    urls: list[str]
    record: Callable[[Entry], None]
    shown: dict[int, str] = field(default_factory=dict)  # tracked app index -> code
    stop_at: float = 0.0  # time.monotonic(): no new step after this


class Client:
    def __init__(self, plan: ClientPlan, index: int, world: World) -> None:
        self.plan = plan
        self.index = index
        self.world = world
        self.sio: socketio.AsyncClient | None = None
        self.sid: str | None = None
        self.token: str | None = None  # a tracked app's session
        self.tokens: list[str] = []  # a tracker's sessions
        self.tracked_targets: set[int] = set()
        self.inbox: list[Entry] = []
        self.arrived = asyncio.Event()
        # Per socket: the last request sent on it and its session (the answer to come is
        # that request's, even after the client hung up).
        self.last_request: dict[str, tuple[str, str | None]] = {}
        self.phase = RUN

    @property
    def connected(self) -> bool:
        return self.sio is not None and self.sid is not None

    # ------------------------------------------------------------------------- recording

    def _record(self, kind: str, event: str = "", payload: Any = None, **extra: Any) -> Entry:
        entry = Entry(
            t=now_ms(),
            client=self.plan.name,
            kind=kind,
            sid=extra.pop("sid", self.sid),
            event=event,
            payload=payload,
            phase=self.phase,
            **extra,
        )
        self.world.record(entry)
        return entry

    async def _on_event(self, sid: str | None, event: str, *args: Any) -> None:
        payload = args[0] if len(args) == 1 else (list(args) if args else None)
        awaiting, token = self.last_request.get(sid or "", (None, None))
        entry = self._record(RECV, event, payload, token=token, awaiting=awaiting, sid=sid)
        self._learn(entry)
        self.inbox.append(entry)
        self.arrived.set()

    def _learn(self, entry: Entry) -> None:
        session = entry.session
        if self.plan.role is Role.TRACKED:
            if entry.event == "codeRegistered":
                self.world.shown[self.index] = self.plan.code or ""
                if session is not None:
                    self.token = session
            elif entry.event == "trackerConnected" and session is not None:
                self.token = session
        elif entry.event == "trackingStarted" and session is not None:
            if session not in self.tokens:
                self.tokens.append(session)

    # ------------------------------------------------------------------------- connection

    async def connect(self, instance: int, transport: str) -> bool:
        if self.connected:
            return True
        url = self.world.urls[instance % len(self.world.urls)]
        sio = socketio.AsyncClient(reconnection=False, request_timeout=5)
        held: list[str | None] = [None]  # this connection's sid, kept after it closes

        async def on_any(event: str, *args: Any) -> None:
            held[0] = held[0] or sio.get_sid()
            await self._on_event(held[0], event, *args)

        sio.on("*", on_any)
        sio.on("disconnect", lambda *reason: self._on_disconnect(sio))
        try:
            await sio.connect(
                url,
                transports=_TRANSPORTS[transport],
                headers={"X-Forwarded-For": self.plan.address},
                wait_timeout=5,
            )
        except (socketio.exceptions.ConnectionError, OSError, TimeoutError) as exc:
            self._record(CONNECT_FAILED, payload=str(exc)[:200], sid=None, instance=instance)
            with contextlib.suppress(Exception):
                await sio.disconnect()
            return False
        self.sio, self.sid = sio, sio.get_sid()
        held[0] = self.sid
        self._record(CONNECT, payload=transport, instance=instance)
        return True

    def _on_disconnect(self, sio: socketio.AsyncClient) -> None:
        if sio is self.sio and self.sid is not None:
            self._record(DISCONNECT)
            self.sid = None
            self.arrived.set()

    async def hang_up(self, abort: bool = False) -> None:
        """Leave: a clean disconnect, or (abort) the WebSocket just closes, as when an app dies."""
        sio = self.sio
        if sio is None:
            return
        if abort and sio.eio.current_transport == "websocket" and sio.eio.ws is not None:
            with contextlib.suppress(Exception):
                await sio.eio.ws.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while self.sid is not None:
                        await asyncio.sleep(0.02)
        with contextlib.suppress(Exception):
            await sio.disconnect()
        self._on_disconnect(sio)
        self.sio = None

    # --------------------------------------------------------------------------- requests

    async def request(self, event: str, payload: Any, token: str | None) -> Entry | None:
        """Emit and wait for the answer (its reply event or `error`); None without one."""
        if self.sio is None or not self.connected:
            return None
        start = len(self.inbox)
        self._sent(event, payload, token)
        try:
            await self.sio.emit(event, payload)
            async with asyncio.timeout(REPLY_SECONDS):
                while True:
                    for entry in self.inbox[start:]:
                        if entry.event in (REPLIES[event], "error"):
                            return entry
                    start = len(self.inbox)
                    if not self.connected:
                        return None
                    self.arrived.clear()
                    await self.arrived.wait()
        except (TimeoutError, socketio.exceptions.SocketIOError):
            return None

    def _sent(self, event: str, payload: Any, token: str | None) -> None:
        self._record(SENT, event, payload, token=token)
        if self.sid is not None:
            self.last_request[self.sid] = (event, token)

    async def drop_mid(self, event: str, payload: Any, token: str | None, abort: bool) -> None:
        """Emit, then hang up before any answer can come."""
        if self.sio is None:
            return
        self._sent(event, payload, token)
        with contextlib.suppress(socketio.exceptions.SocketIOError):
            await self.sio.emit(event, payload)
        await self.hang_up(abort)

    async def rest_status(self, token: str) -> None:
        url = self.world.urls[self.index % len(self.world.urls)] + f"/api/status/{token}"
        self._record(SENT, "restStatus", None, token=token, sid=None)
        status: int | str
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    url,
                    headers={"X-Forwarded-For": self.plan.address},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response,
            ):
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = type(exc).__name__
        self._record(
            RECV, "restStatus", {"status": status}, token=token, awaiting="restStatus", sid=None
        )

    # ------------------------------------------------------------------------------ steps

    async def run(self) -> None:
        steps = self.plan.steps
        if self.plan.role is Role.TRACKED and steps:
            await self._ensure(steps[0])
        for step in steps:
            if time.monotonic() + step.pause > self.world.stop_at:
                return
            await asyncio.sleep(step.pause)
            try:
                await self.perform(step)
            except (socketio.exceptions.SocketIOError, aiohttp.ClientError, OSError):
                continue

    async def _ensure(self, step: Step) -> bool:
        """Connected, as the app would be before doing anything: if not, connect and (with
        `resume`) rejoin its sessions, or register its code."""
        if self.connected:
            return True
        if not await self.connect(step.instance, step.transport):
            return False
        if not step.resume:
            return True
        if self.plan.role is Role.TRACKED:
            if self.token is not None:
                await self.request("reconnectSession", self._rejoin("tracked"), self.token)
            await self.request("registerCode", self.plan.code, self.token)
        elif self.plan.role is Role.TRACKER:
            for token in list(self.tokens):
                await self.request("reconnectSession", _rejoin(token, "tracker"), token)
        return True

    def _rejoin(self, role: str) -> dict[str, str]:
        assert self.token is not None
        return _rejoin(self.token, role)

    def _session(self, step: Step) -> str | None:
        if self.plan.role is Role.TRACKED:
            return self.token
        return self.tokens[step.target % len(self.tokens)] if self.tokens else None

    async def perform(self, step: Step) -> None:
        if step.act in (Act.PAUSE, Act.SILENCE):
            return
        if step.act is Act.DISCONNECT:
            await self.hang_up(step.abort)
            return
        if step.act is Act.GUESS:
            await self._guess(step)
            return
        if not await self._ensure(step):
            return
        token = self._session(step)
        if step.act is Act.REGISTER and self.plan.code:
            await self.request("registerCode", self.plan.code, self.token)
        elif step.act is Act.TRACK:
            await self._track(step)
        elif step.act is Act.RESUME and token is not None:
            role = "tracked" if self.plan.role is Role.TRACKED else "tracker"
            await self.request("reconnectSession", _rejoin(token, role), token)
        elif step.act is Act.CHECK_IN and token is not None:
            await self.request("checkIn", token, token)
        elif step.act is Act.SET_TIMERS and token is not None:
            timers = {
                "sessionToken": token,
                "reminderTimeMinutes": step.reminder,
                "alertTimeMinutes": step.alert,
            }
            await self.request("setTimers", timers, token)
        elif step.act is Act.STATUS and token is not None:
            await self.request("getStatus", {"sessionToken": token}, token)
        elif step.act is Act.REST_STATUS and token is not None:
            await self.rest_status(token)
        elif step.act is Act.DROP_MID:
            await self._drop_mid(step, token)

    async def _track(self, step: Step) -> None:
        code = self.world.shown.get(step.target)
        if code is None or step.target in self.tracked_targets:
            return  # nothing shown yet, or already tracked: a real tracker does not retype it
        reply = await self.request("trackCode", code, None)
        if reply is not None and reply.event == "trackingStarted":
            self.tracked_targets.add(step.target)

    async def _drop_mid(self, step: Step, token: str | None) -> None:
        payload: Any
        if step.event == "registerCode" and self.plan.code:
            payload = self.plan.code
        elif step.event == "trackCode":
            payload = self.world.shown.get(step.target)
            if payload is None or step.target in self.tracked_targets:
                return
            self.tracked_targets.add(step.target)  # it may have paired before the drop
        elif token is None:
            return
        elif step.event == "reconnectSession":
            role = "tracked" if self.plan.role is Role.TRACKED else "tracker"
            payload = _rejoin(token, role)
        elif step.event == "checkIn":
            payload = token
        elif step.event == "setTimers":
            payload = {
                "sessionToken": token,
                "reminderTimeMinutes": step.reminder,
                "alertTimeMinutes": step.alert,
            }
        else:
            return
        await self.drop_mid(step.event, payload, token, step.abort)

    async def _guess(self, step: Step) -> None:
        """Wrong codes, all at once, on whichever instance the step names."""
        if self.connected and self.sio is not None and not self._on_instance(step.instance):
            await self.hang_up()
        if not await self.connect(step.instance, step.transport) or self.sio is None:
            return
        start = len(self.inbox)
        codes = list(step.codes)
        shown = self.world.shown.get(step.target)
        if step.real and shown is not None:
            codes[-1] = shown
        answers = ("error", "trackingStarted")
        try:
            for code in codes:
                self._sent("trackCode", code, None)
                await self.sio.emit("trackCode", code)
            async with asyncio.timeout(REPLY_SECONDS):
                while sum(e.event in answers for e in self.inbox[start:]) < len(codes):
                    if not self.connected:
                        return
                    self.arrived.clear()
                    await self.arrived.wait()
        except (TimeoutError, socketio.exceptions.SocketIOError):
            return

    def _on_instance(self, instance: int) -> bool:
        url = self.world.urls[instance % len(self.world.urls)]
        return self.sio is not None and self.sio.connection_url.startswith(url)


def _rejoin(token: str, role: str) -> dict[str, str]:
    return {"sessionToken": token, "role": role}
