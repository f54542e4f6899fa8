#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (Python 3.11+, Node.js 20+), then runs
# the linters and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,dev]'

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

.venv/bin/ruff check server tests scripts
.venv/bin/ruff format --check server tests scripts
.venv/bin/mypy server
exec .venv/bin/pytest "$@"
