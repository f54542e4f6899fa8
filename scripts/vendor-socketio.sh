#!/usr/bin/env bash
# Refreshes server/static/socket.io.min.js, the browser build of socket.io-client that /demo
# serves, from the npm package pinned by tests/node/package-lock.json. Run it after bumping
# socket.io-client there, and commit the result: the server and the image need no npm at all.
# tests/test_demo_browser.py fails while the committed copy and the lockfile's package differ.
set -euo pipefail
cd "$(dirname "$0")/.."

(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
cp tests/node/node_modules/socket.io-client/dist/socket.io.min.js server/static/socket.io.min.js
head -c 40 server/static/socket.io.min.js | tr '\n' ' ' && echo " -> server/static/socket.io.min.js"
