"""py-spy profiles of our server: recording while a benchmark runs, and where the time went."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def start_py_spy(pid: int, out: Path, duration: float) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--duration", str(int(duration))),
            *("--rate", "200", "--format", "raw", "-o", str(out / "profile.txt")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


LIBRARIES = (
    ("JSON (server/jsonlib, msgspec)", ("server/jsonlib.py", "msgspec", "json/")),
    ("our code (server/)", ("server/",)),
    ("engine.io", ("engineio/",)),
    ("socket.io", ("socketio/",)),
    ("redis-py", ("redis/",)),
    ("aiohttp", ("aiohttp/",)),
    ("asyncio", ("asyncio/",)),
)
# Where a sample's time goes: the first of these found anywhere on its stack.
PURPOSES = (
    ("Redis writes and reads (store)", ("RedisPersistence.", "redis/", "server/redislane.py")),
    ("emits: socket.io manager + engine.io send", ("AsyncServer.emit", "AsyncManager.emit")),
    ("our handlers, besides the above", ("server/events.py", "server/store.py")),
    ("packet receive + decode + dispatch", ("engineio/", "socketio/", "server/transport.py")),
    ("aiohttp WebSocket frame reading", ("aiohttp/",)),
)


def module_of(frame: str) -> str:
    """py-spy's frames read `function (path/module.py:line)`."""
    return frame[frame.rfind("(") + 1 :]


def first_match(frames: list[str], table: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for name, needles in table:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return "asyncio loop and other"


def summarize_profile(path: Path, top: int = 25) -> str:
    """Own and total time per function, by library and by purpose, from py-spy's raw stacks.

    py-spy sees Python frames only: time in C (msgspec, socket syscalls) counts as the
    Python function that called it.
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    library: collections.Counter[str] = collections.Counter()
    purpose: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if frame and "(" in frame]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        own[frames[-1]] += count
        library[first_match([module_of(frames[-1])], LIBRARIES)] += count
        purpose[first_match(frames, PURPOSES)] += count
        for frame in set(frames):
            total[frame] += count

    # The event loop and the process's entry are on every stack: leave them out.
    inner = collections.Counter({f: n for f, n in total.items() if n < 0.95 * samples})

    def table(title: str, counter: collections.Counter[str], limit: int = 99) -> list[str]:
        rows = [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counter.most_common(limit)]
        return ["", title, *rows]

    return "\n".join(
        [
            f"{samples} samples of active CPU",
            *table("where the time goes (first match on the stack):", purpose),
            *table("own time by library (leaf frame):", library),
            *table(f"top {top} functions by own time:", own, top),
            *table(f"top {top} functions by total time (below the event loop):", inner, top),
        ]
    )


class Recorder:
    """py-spy on one process for one phase of a benchmark: `begin` starts, `end` writes raw stacks
    to <out>/profile-<name>.txt and a summary beside it (profile-<name>-summary.txt)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.spy: subprocess.Popen[bytes] | None = None
        self.name = ""

    def begin(self, name: str, pid: int) -> None:
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        self.out.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.spy = subprocess.Popen(
            [
                *(
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--function",
                ),
                *("--format", "raw", "-o", str(self.out / f"profile-{name}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def end(self) -> str:
        """Stop recording (py-spy writes its file on SIGINT); returns the summary."""
        if self.spy is None:
            return ""
        self.spy.send_signal(signal.SIGINT)
        try:
            self.spy.wait(30)
        except subprocess.TimeoutExpired:
            self.spy.kill()
            self.spy.wait()
        self.spy = None
        raw = self.out / f"profile-{self.name}.txt"
        if not raw.exists():
            return f"py-spy wrote no profile for {self.name}"
        summary = summarize_profile(raw)
        (self.out / f"profile-{self.name}-summary.txt").write_text(summary + "\n")
        return summary
