"""What a chaos run saw: every client's sends and receipts, the faults, and the final state.

Plain data, so that the checker is a set of pure functions over it and its tests can write a
history by hand. Times are wall-clock milliseconds (the server stamps check-ins with the same
clock: one machine).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

# Entry kinds
CONNECT: Final = "connect"
CONNECT_FAILED: Final = "connect-failed"
DISCONNECT: Final = "disconnect"
SENT: Final = "sent"
RECV: Final = "recv"

# Phases
RUN: Final = "run"
FINAL: Final = "final"  # the probes after the settle: each app re-registers its own code

JOIN_REPLIES: Final = ("trackingStarted", "sessionReconnected")
LISTS: Final = ("entries", "faults", "health", "memory")  # History fields of records
REPLIES: Final = {
    "registerCode": "codeRegistered",
    "trackCode": "trackingStarted",
    "reconnectSession": "sessionReconnected",
    "checkIn": "checkInConfirmed",
    "setTimers": "timersSet",
    "getStatus": "statusUpdate",
    "restStatus": "restStatus",
}


def ref(token: str | None) -> str:
    """How a token appears in a report (as the server's logs name it), never whole."""
    if token is None:
        return "-"
    return "s-" + hashlib.sha256(token.encode()).hexdigest()[:10]


@dataclass
class Entry:
    t: int  # ms
    client: str
    kind: str
    sid: str | None = None
    event: str = ""
    payload: Any = None
    # The session the client meant or understood (payloads such as checkInConfirmed carry none).
    token: str | None = None
    # For a receipt: the request the client was waiting on when it came (errors name nothing).
    awaiting: str | None = None
    phase: str = RUN
    instance: int | None = None  # CONNECT: which instance the client chose

    @property
    def session(self) -> str | None:
        """The token this entry is about: from its payload when it has one."""
        if isinstance(self.payload, dict):
            value = self.payload.get("sessionToken")
            if isinstance(value, str):
                return value
        return self.token


@dataclass
class FaultRecord:
    kind: str
    start: int
    end: int
    instance: int | None = None
    detail: str = ""


@dataclass
class HealthSample:
    t: int  # when the request went out
    instance: int
    status: int | str  # HTTP status, or the name of the error
    redis: str | None  # the body's "redis" field


@dataclass
class Snapshot:
    """Redis and the clients at one moment after the run."""

    t: int
    connected: list[str]  # socket ids the clients hold open
    records: dict[str, dict[str, Any]]  # token -> session record as stored
    codes: dict[str, dict[str, Any]]  # code -> entry as stored
    live_instances: list[str] = field(default_factory=list)  # heartbeats younger than 5 s


@dataclass
class Memory:
    instance: int
    baseline_kb: int
    final_kb: int


@dataclass
class History:
    seed: int
    started: int
    ended: int  # when actions and faults stopped
    attempt_limit: int
    roles: dict[str, str]  # client -> role
    addresses: dict[str, str]  # client -> address
    codes: dict[str, str]  # tracked client -> its own code
    entries: list[Entry] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    health: list[HealthSample] = field(default_factory=list)
    settled: Snapshot | None = None  # after the settle, clients as they are
    emptied: Snapshot | None = None  # after every client hung up and a settle again
    logs: dict[str, str] = field(default_factory=dict)  # name -> text
    exit_codes: dict[str, list[int]] = field(default_factory=dict)  # after each SIGTERM
    memory: list[Memory] = field(default_factory=list)
    memory_slack_kb: int = 30_000

    def dump(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def load(cls, text: str) -> History:
        """A history as `dump` wrote it (to check it again, e.g. with a changed checker)."""
        data = json.loads(text)
        snapshots = {
            k: Snapshot(**data[k]) if data.get(k) else None for k in ("settled", "emptied")
        }
        return cls(
            **{k: v for k, v in data.items() if k not in LISTS and k not in snapshots},
            entries=[Entry(**e) for e in data["entries"]],
            faults=[FaultRecord(**f) for f in data["faults"]],
            health=[HealthSample(**s) for s in data["health"]],
            memory=[Memory(**m) for m in data["memory"]],
            **snapshots,
        )

    def redis_down(self) -> list[tuple[int, int]]:
        """When Redis was away: restarts (down to back up) and stalls."""
        return [(f.start, f.end) for f in self.faults if f.kind in ("redis-restart", "redis-stall")]
