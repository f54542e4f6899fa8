#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (Python 3.11-3.13, Node.js 20+), then runs
# the linters and the whole test suite, in three worker processes. Extra arguments go to pytest.
# The locked versions (requirements-dev.lock) go into .venv once (scripts/_venv.sh);
# PYTHON=python3.12 VENV=.venv-3.12 tests another interpreter in a virtualenv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_venv.sh
use_venv requirements-dev.lock

# The tests start their own redis-server on free ports; they only need the binary.
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server is needed by the tests: install it (e.g. apt-get install redis-server)" >&2
        exit 1
    fi
fi
# The demo page's end-to-end test drives Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is needed by the tests: install it (e.g. apt-get install chromium)" >&2
        exit 1
    fi
fi
# tests/test_haproxy.py runs several server processes behind Debian's HAProxy (skipped without it).
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
    else
        echo "haproxy is missing: tests/test_haproxy.py will be skipped (apt-get install haproxy)" >&2
    fi
fi
# The compatibility tests drive the server with the real Node socket.io-client, and the browser
# test uses playwright-core, both from the lockfile.
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

"$VENV/bin/ruff" check server tests scripts
"$VENV/bin/ruff" format --check server tests scripts
"$VENV/bin/mypy" server
# The suite mostly waits (on servers, timers and Redis): three pytest-xdist workers, each with its
# own Redis and servers on free ports, take a third of the time serial runs do (docs/testing.md).
# TEST_WORKERS=0 runs it in this process; an -n of the caller's wins over this one.
exec "$VENV/bin/pytest" -n "${TEST_WORKERS:-3}" --dist worksteal "$@"
