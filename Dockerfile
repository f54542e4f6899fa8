# syntax=docker/dockerfile:1
# Build stage: a virtualenv holding the server, its dependencies and its static files (the demo
# page and the socket.io-client browser build committed in server/static/).
FROM python:3.11-slim AS build
WORKDIR /src
# Exactly the versions the tests ran with: every file checked against requirements.lock's hashes,
# nothing resolved anew (--no-deps). The server is then built by the locked setuptools (no build
# isolation, which would fetch an unpinned one), which leaves the image afterwards.
COPY requirements.lock ./
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY server ./server
RUN /venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /venv/bin/pip uninstall --yes --quiet setuptools \
    && /venv/bin/python -c "import importlib.resources as r; \
assert r.files('server').joinpath('static/socket.io.min.js').is_file(), 'static files missing'"

# Run stage: the slim base, the virtualenv and an unprivileged user; no sources, no build tools.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home app
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER app
EXPOSE 3000
# For Docker and Compose; Railway probes its own healthcheck path (set it to /healthz) instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM; it reads PORT itself (Railway injects it).
CMD ["python", "-m", "server"]
