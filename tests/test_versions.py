"""The start-up check of the python-socketio / python-engineio releases the server was verified
with: the same ranges as pyproject.toml, and one warning naming them when another is installed."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from server import versions
from tests.support.processes import REPO_ROOT


def project_requirements() -> dict[str, Requirement]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    return {(req := Requirement(line)).name: req for line in dependencies}


def test_the_verified_ranges_are_pyprojects_tight_ranges() -> None:
    required = project_requirements()
    for package, compatible in versions.VERIFIED.items():
        assert str(required[package].specifier) == compatible, package
        assert compatible.startswith("~=") and compatible.count(".") == 2, compatible


def test_the_installed_releases_are_verified() -> None:
    assert versions.unverified() == []


def naive_within(version: str, compatible: str) -> bool:
    """Compares version strings as text: "5.9.0" would pass for ~=5.18.0."""
    floor = compatible[2:]
    return version >= floor and version.startswith(floor.rsplit(".", 1)[0])


CASES = [
    ("5.18.0", True),
    ("5.18.1", True),
    ("5.18.12", True),
    ("5.18.1.post1", True),
    ("5.18.1+local", True),
    ("5.18.0rc1", False),
    ("5.17.9", False),
    ("5.19.0", False),
    ("5.19.0rc1", False),
    ("5.180.0", False),
    ("6.0.0", False),
    ("4.18.0", False),
]


@pytest.mark.parametrize(
    "within",
    [
        versions.within,
        pytest.param(
            naive_within, marks=pytest.mark.xfail(strict=True, reason="text is not a version")
        ),
    ],
)
def test_a_release_is_within_the_range_as_pep_440_says(
    within: Callable[[str, str], bool],
) -> None:
    for version, inside in CASES:
        assert within(version, "~=5.18.0") is inside, version
        # The reference: packaging's own reading of PEP 440, pre-releases included.
        assert (version in SpecifierSet("~=5.18.0", prereleases=True)) is inside, version


def installed(**releases: str) -> Callable[[str], str]:
    def version(package: str) -> str:
        if package not in releases:
            raise metadata.PackageNotFoundError(package)
        return releases[package]

    return version


def test_another_engineio_release_logs_one_warning_naming_the_verified_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="server.versions")
    found = versions.warn_if_unverified(
        installed(**{"python-socketio": "5.18.1", "python-engineio": "4.16.0"})
    )
    assert found is True
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "python-engineio 4.16.0" in message
    assert versions.VERIFIED["python-engineio"] in message
    assert "python-socketio" not in message


def test_both_outside_still_make_a_single_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.versions")
    versions.warn_if_unverified(
        installed(**{"python-socketio": "5.17.1", "python-engineio": "4.14.0"})
    )
    [record] = caplog.records
    assert "python-socketio 5.17.1" in record.getMessage()
    assert "python-engineio 4.14.0" in record.getMessage()


def test_verified_releases_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="server.versions")
    found = versions.warn_if_unverified(
        installed(**{"python-socketio": "5.18.1", "python-engineio": "4.15.1"})
    )
    assert found is False
    assert caplog.records == []
