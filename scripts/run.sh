#!/usr/bin/env bash
# Sets up the server on a fresh machine (Python 3.11-3.13) and runs it: in memory unless REDIS_URL
# is set. Installs the locked versions (requirements.lock) into .venv once; later starts install
# nothing (scripts/_venv.sh). PYTHON=python3.12 picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_venv.sh
use_venv requirements.lock requirements-dev.lock
exec "$VENV/bin/python" -m server
