"""What a chaos run will do, drawn up front from its seed: each client's steps and the faults.

Everything random is drawn here, before anything runs, so a seed names one sequence of actions
and one fault schedule. What each action then meets (a code already paired, an instance that is
down) depends on timing, which no seed can fix: a replay repeats the choices, not the answers.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

TRANSPORTS: Final = ("websocket", "polling", "upgrade")  # upgrade: polling, then websocket
GUESS_SUFFIX: Final = "999"  # guessed codes end so; no app's code does (apps are < 999)


class Role(enum.Enum):
    TRACKED = "tracked"
    TRACKER = "tracker"
    GUESSER = "guesser"  # hammers trackCode with wrong codes from one shared address


class Act(enum.Enum):
    CONNECT = "connect"  # (re)connect if not connected; `resume` rejoins known sessions
    REGISTER = "register"  # registerCode(own code)
    RESUME = "resume"  # reconnectSession with the known token(s)
    TRACK = "track"  # trackCode(code of tracked app `target`)
    CHECK_IN = "checkIn"
    SET_TIMERS = "setTimers"
    STATUS = "getStatus"
    REST_STATUS = "restStatus"  # GET /api/status/<token>
    DROP_MID = "dropMid"  # emit `event`, then hang up at once
    DISCONNECT = "disconnect"
    PAUSE = "pause"
    SILENCE = "silence"  # a tracked person stops checking in for a while: alerts come due
    GUESS = "guess"  # `count` wrong codes at once


class Fault(enum.Enum):
    SIGTERM = "sigterm"  # SIGTERM an instance, start it again
    KILL = "kill9"  # SIGKILL an instance, start it again after `seconds`
    STALL = "redis-stall"  # DEBUG SLEEP `seconds`
    REDIS_RESTART = "redis-restart"  # kill Redis, start it empty after `seconds`


ALL_FAULTS: Final = tuple(Fault)


@dataclass(frozen=True)
class Step:
    act: Act
    pause: float  # seconds to wait before this step
    instance: int = 0  # for CONNECT (and where a guesser connects)
    transport: str = "websocket"
    resume: bool = True  # CONNECT: rejoin the known sessions at once, as the apps do
    target: int = 0  # TRACK: which tracked app's code
    event: str = ""  # DROP_MID: which event is in flight when the line drops
    abort: bool = False  # DISCONNECT / DROP_MID: drop the transport, no goodbye
    reminder: float = 0.0  # SET_TIMERS, minutes
    alert: float = 0.0
    count: int = 0  # GUESS
    codes: tuple[str, ...] = ()  # GUESS
    real: bool = False  # GUESS: the last code is the one tracked app `target` shows


@dataclass(frozen=True)
class ClientPlan:
    name: str
    role: Role
    address: str  # the X-Forwarded-For this client connects with (TRUST_PROXY is on)
    code: str | None  # a tracked app's own code
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class FaultPlan:
    at: float  # seconds after the start
    fault: Fault
    instance: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    seed: int
    clients: tuple[ClientPlan, ...]
    faults: tuple[FaultPlan, ...]
    instances: int
    seconds: float


_TRACKED_WEIGHTS: Final = {
    Act.CHECK_IN: 6,
    Act.SET_TIMERS: 3,
    Act.STATUS: 2,
    Act.REST_STATUS: 1,
    Act.REGISTER: 2,
    Act.RESUME: 1,
    Act.DROP_MID: 2,
    Act.DISCONNECT: 1,
    Act.CONNECT: 2,
    Act.PAUSE: 3,
    Act.SILENCE: 2,
}
_TRACKER_WEIGHTS: Final = {
    Act.TRACK: 3,
    Act.STATUS: 2,
    Act.REST_STATUS: 1,
    Act.RESUME: 1,
    Act.DROP_MID: 2,
    Act.DISCONNECT: 1,
    Act.CONNECT: 2,
    Act.PAUSE: 5,
}
_DROP_EVENTS: Final = {
    Role.TRACKED: ("registerCode", "reconnectSession", "checkIn", "setTimers"),
    Role.TRACKER: ("trackCode", "reconnectSession"),
}


def _pick(rng: random.Random, weights: dict[Act, int]) -> Act:
    acts = list(weights)
    return rng.choices(acts, weights=[weights[a] for a in acts])[0]


def _step(rng: random.Random, role: Role, act: Act, instances: int, n_tracked: int) -> Step:
    # Every field is drawn for every step, whatever the act, so that one step's kind never
    # shifts the random stream of the next.
    pause = round(rng.uniform(0.05, 1.2), 3)
    instance = rng.randrange(instances)
    transport = rng.choice(TRANSPORTS)
    resume = rng.random() < 0.8
    target = rng.randrange(max(n_tracked, 1))
    event = rng.choice(_DROP_EVENTS.get(role, ("trackCode",)))
    abort = rng.random() < 0.5
    reminder = round(rng.uniform(0.02, 0.05), 3)
    alert = round(rng.uniform(0.05, 0.15), 3)  # 3-9 s: alerts fall due within the run
    silence = round(rng.uniform(4.0, 12.0), 3)
    if act is Act.SILENCE:
        pause = silence
    return Step(act, pause, instance, transport, resume, target, event, abort, reminder, alert)


def _guess_step(rng: random.Random, instances: int, n_tracked: int) -> Step:
    count = rng.randint(3, 8)
    # Some start with 0: six digits all the same, which the Node server answered as any other.
    codes = tuple(f"{rng.randint(0, 999):03d}{GUESS_SUFFIX}" for _ in range(count))
    return Step(
        Act.GUESS,
        round(rng.uniform(0.5, 3.0), 3),
        instance=rng.randrange(instances),
        transport=rng.choice(("websocket", "polling")),
        target=rng.randrange(max(n_tracked, 1)),
        count=count,
        codes=codes,
        # Now and then the last guess is right (a code some app shows): a right guess past
        # the limit must be refused like a wrong one, and only then is the limit seen to hold.
        real=rng.random() < 0.3,
    )


def make_plan(
    seed: int,
    *,
    clients: int = 20,
    instances: int = 3,
    seconds: float = 60.0,
    faults: tuple[Fault, ...] = ALL_FAULTS,
    guessers: int = 2,
) -> Plan:
    """The whole run, from `seed`: steps enough for `seconds` per client, and the faults."""
    rng = random.Random(seed)
    honest = max(clients - guessers, 2)
    n_tracked = max(honest * 2 // 5, 1)
    plans: list[ClientPlan] = []
    for index in range(honest + guessers):
        client_rng = random.Random(f"{seed}/client/{index}")
        if index < n_tracked:
            role = Role.TRACKED
        elif index < honest:
            role = Role.TRACKER
        else:
            role = Role.GUESSER
        steps: list[Step] = []
        budget = seconds
        while budget > 0:
            if role is Role.GUESSER:
                step = _guess_step(client_rng, instances, n_tracked)
            else:
                weights = _TRACKED_WEIGHTS if role is Role.TRACKED else _TRACKER_WEIGHTS
                step = _step(client_rng, role, _pick(client_rng, weights), instances, n_tracked)
            steps.append(step)
            budget -= step.pause + 0.2  # a step's own round trips take time too
        code = f"{client_rng.randint(100, 899)}{index:03d}" if role is Role.TRACKED else None
        address = "10.99.0.1" if role is Role.GUESSER else f"10.{index // 250}.{index % 250}.7"
        plans.append(ClientPlan(f"{role.value}-{index}", role, address, code, tuple(steps)))
    return Plan(seed, tuple(plans), _faults(rng, faults, instances, seconds), instances, seconds)


def _faults(
    rng: random.Random, kinds: tuple[Fault, ...], instances: int, seconds: float
) -> tuple[FaultPlan, ...]:
    """A fault every ~6-10 s from 3 s in, none in the last 4 s (the run must settle)."""
    if not kinds:
        return ()
    schedule: list[FaultPlan] = []
    at = rng.uniform(3.0, 6.0)
    order = list(kinds)
    rng.shuffle(order)
    turn = 0
    while at < seconds - 4.0:
        # Each kind in turn first, so that a short run still meets every kind of fault.
        kind = order[turn] if turn < len(order) else rng.choice(kinds)
        turn += 1
        if kind is Fault.STALL:
            length = round(rng.uniform(0.5, 2.0), 2)
        elif kind is Fault.REDIS_RESTART:
            length = round(rng.uniform(2.5, 4.0), 2)  # long enough for /healthz to notice
        else:
            length = round(rng.uniform(0.3, 1.5), 2)
        schedule.append(FaultPlan(round(at, 2), kind, rng.randrange(instances), length))
        at += rng.uniform(6.0, 10.0)
    return tuple(schedule)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """`all`, `none`, or a comma-separated list of fault names (sigterm,kill9,...)."""
    if text == "all":
        return ALL_FAULTS
    if text == "none":
        return ()
    names = {f.value: f for f in Fault}
    picked = []
    for part in text.split(","):
        if part.strip() not in names:
            raise ValueError(f"unknown fault {part!r}; known: all, none, {', '.join(names)}")
        picked.append(names[part.strip()])
    return tuple(picked)
