#!/usr/bin/env bash
# Sets up the server on a fresh machine (Python 3.11+) and runs it: in memory unless REDIS_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python -m server
