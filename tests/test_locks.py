"""The lock files (scripts/lock.sh): every pin hashed, inside pyproject.toml's ranges, the same
versions in both, and the versions this suite runs with."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import REPO_ROOT

RUNTIME_LOCK = REPO_ROOT / "requirements.lock"
DEV_LOCK = REPO_ROOT / "requirements-dev.lock"


@dataclass(frozen=True)
class Pin:
    version: str
    marker: Marker | None
    hashes: frozenset[str]

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def pins(lock: Path) -> dict[str, Pin]:
    """name -> Pin, from a requirements file in pip's hash-checking format."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    found: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = re.split(r"\s+(?=--)", line)
        parsed = Requirement(requirement)
        [specifier] = parsed.specifier
        assert specifier.operator == "==", line
        hashes = frozenset(option.removeprefix("--hash=") for option in options)
        assert all(option.startswith("--hash=sha256:") for option in options), line
        name = canonicalize_name(parsed.name)
        assert name not in found, f"{name} pinned twice in {lock.name}"
        found[name] = Pin(specifier.version, parsed.marker, hashes)
    return found


def pyproject() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def requirements(*extras: str) -> list[Requirement]:
    project = pyproject()
    lines = list(project["project"]["dependencies"])  # type: ignore[index]
    lines += project["build-system"]["requires"]  # type: ignore[index]
    for extra in extras:
        lines += project["project"]["optional-dependencies"][extra]  # type: ignore[index]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda lock: lock.name)
def test_every_pin_carries_its_hashes(lock: Path) -> None:
    locked = pins(lock)
    assert len(locked) > 10
    for name, pin in locked.items():
        assert pin.hashes, f"{name} has no hash in {lock.name}"


@pytest.mark.parametrize(
    ("lock", "extras"),
    [(RUNTIME_LOCK, ()), (DEV_LOCK, ("test", "dev", "bench"))],
    ids=["requirements.lock", "requirements-dev.lock"],
)
def test_the_lock_pins_a_version_pyproject_allows(lock: Path, extras: tuple[str, ...]) -> None:
    locked = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {lock.name}: run ./scripts/lock.sh"
        version = locked[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside pyproject's {requirement}: "
            "run ./scripts/lock.sh"
        )


def test_the_runtime_lock_is_the_dev_locks_runtime_part() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert runtime.keys() <= dev.keys()
    for name, pin in runtime.items():
        assert (pin.version, pin.hashes) == (dev[name].version, dev[name].hashes), name


def test_the_suite_runs_with_the_locked_versions() -> None:
    # What the image installs is what was tested: ./scripts/test.sh installs this lock.
    stale = {}
    for name, pin in pins(DEV_LOCK).items():
        if not pin.applies():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin.version:
            stale[name] = f"{installed}, locked {pin.version}"
    assert not stale, f"run ./scripts/test.sh to install requirements-dev.lock: {stale}"
