"""The python-socketio and python-engineio releases this server was verified with.

The transport overrides their internals (`sio.eio._async`, `_handle_eio_message`,
`_send_eio_packet`, `socket.queue`, ...), so another release may break it in ways no import
catches. pyproject.toml holds the same ranges (a test keeps them equal); the locks pin one version
inside them. A start with any other version installed logs one warning naming the range.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import metadata

log = logging.getLogger(__name__)

# Compatible-release ranges (PEP 440 `~=`): "~=5.18.0" is >=5.18.0 and below 5.19.
VERIFIED = {
    "python-socketio": "~=5.18.0",
    "python-engineio": "~=4.15.1",
}


def release(version: str) -> tuple[int, ...]:
    """(5, 18, 1) of "5.18.1", "5.18.1.post1" or "5.18.1rc2": the numbers before anything else."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    if numbers is None:
        raise ValueError(f"not a release version: {version!r}")
    return tuple(int(part) for part in numbers.group().split("."))


def _padded(numbers: tuple[int, ...], length: int) -> tuple[int, ...]:
    return numbers + (0,) * (length - len(numbers))


def _is_prerelease(version: str) -> bool:
    """ "5.18.0rc1", "5.18.0.dev3": versions that come before their release (local parts aside)."""
    rest = version.split("+")[0][len(".".join(map(str, release(version)))) :]
    return re.search(r"(a|b|c|rc|alpha|beta|pre|preview|dev)\d*", rest.lower()) is not None


def within(version: str, compatible: str) -> bool:
    """Whether `version` is inside the `~=X.Y.Z` range (X.Y.Z or later, X.Y.* only)."""
    if not compatible.startswith("~="):
        raise ValueError(f"not a compatible-release range: {compatible!r}")
    floor = release(compatible[2:])
    if len(floor) < 2:
        raise ValueError(f"~= needs two numbers at least: {compatible!r}")
    installed = release(version)
    length = max(len(floor), len(installed))
    if _padded(installed, length) < _padded(floor, length):
        return False
    if _padded(installed, length) == _padded(floor, length) and _is_prerelease(version):
        return False
    return installed[: len(floor) - 1] == floor[:-1]


def unverified(
    installed: Callable[[str], str] = metadata.version,
) -> list[str]:
    """ "python-engineio 4.16.0 (verified: ~=4.15.1)" for each package outside its range."""
    found = []
    for package, compatible in VERIFIED.items():
        try:
            version = installed(package)
        except metadata.PackageNotFoundError:
            continue  # the import of the server fails first, with its own message
        if not within(version, compatible):
            found.append(f"{package} {version} (verified: {compatible})")
    return found


def warn_if_unverified(installed: Callable[[str], str] = metadata.version) -> bool:
    """Logs one warning when an installed release is outside the verified range; True if so."""
    found = unverified(installed)
    if found:
        log.warning(
            "Unverified versions installed: %s. The server overrides internals of these packages "
            "and was tested only within those ranges: install the locked versions "
            "(pip install --require-hashes --no-deps -r requirements.lock)",
            "; ".join(found),
        )
    return bool(found)
