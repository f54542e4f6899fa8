#!/usr/bin/env bash
# Regenerates the two lock files from pyproject.toml, with the hash of every file of each pinned
# version (every wheel and the sdist), resolved once for Python 3.11-3.13 on every platform
# (markers say where a package is needed only on some):
#   requirements.lock      the server's dependencies: what the Dockerfile and run.sh install
#   requirements-dev.lock  the same versions plus the test, dev and bench extras: test.sh and CI
# Both also pin the build backend ([build-system] requires), since the project itself is installed
# without build isolation. Versions already locked are kept; extra arguments go to
# `uv pip compile`: `./scripts/lock.sh --upgrade` (everything) or `--upgrade-package aiohttp`.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-.venv/bin/uv}
if [ ! -x "$uv" ] && ! command -v "$uv" >/dev/null; then
    echo "uv is not installed: run ./scripts/test.sh once (it installs the dev tools into .venv)" >&2
    exit 1
fi
python=.venv/bin/python
[ -x "$python" ] || python=python3
build_requires=$("$python" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))')

compile() {
    local output=$1
    shift
    # The build requirements come in on standard input ("-"), the project's from pyproject.toml.
    echo "$build_requires" | "$uv" pip compile --quiet --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command ./scripts/lock.sh \
        --output-file "$output" pyproject.toml - "$@"
}

# The dev lock first, then the runtime lock constrained by it: both pin the same versions.
compile requirements-dev.lock --extra test --extra dev --extra bench "$@"
compile requirements.lock --constraint requirements-dev.lock "$@"
echo "requirements.lock and requirements-dev.lock written; commit them with pyproject.toml"
