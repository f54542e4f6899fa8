"""Settings read once from the environment; a bad value stops the start and names the variable."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import msgspec


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    port: int = 3000
    host: str | None = None  # None: every interface, IPv4 and IPv6
    redis_url: str | None = None
    cors_origins: str | list[str] = "*"
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    max_message_bytes: int = 16_384
    redis_timeout: float = 2.0
    redis_max_connections: int = 32
    code_grace_seconds: float = 300.0
    trust_proxy: bool = False
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    code_attempts_per_minute: int = 10
    shutdown_timeout: float = 10.0  # SIGTERM to exit, at most
    # Quotas against hostile clients (docs: SECURITY.md); each refusal is an `error` event and
    # a count in alliswell_refusals_total{quota}.
    code_registrations_per_minute: int = 30  # registerCode per address, of any code
    pending_codes_per_socket: int = 2  # the app shows one code at a time
    pending_codes_per_address: int = 100  # many phones may share one NAT address
    trackers_per_session: int = 20
    events_in_flight_per_connection: int = 16
    outbound_buffer_bytes: int = 1_048_576  # unread output per connection before a hang-up
    attachments_per_packet: int = 0  # the apps send no binary attachments
    connections_per_address: int = 200
    log_lines_per_client_per_minute: int = 5
    # "lean": server.websocket runs the WebSockets; "stock": engine.io's own driver (the way
    # back if an upgrade breaks ours; compression off either way).
    websocket_driver: str = "lean"

    @property
    def code_grace_ms(self) -> int:
        return round(self.code_grace_seconds * 1000)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _webhook(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    url = env.get("ALERT_WEBHOOK_URL", "").strip() or None
    secret = env.get("ALERT_WEBHOOK_SECRET", "").strip() or None
    if url is None:
        return None, None
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"ALERT_WEBHOOK_URL must be an http:// or https:// URL, got {url!r}")
    if secret is None or len(secret) < 16:
        raise SettingsError(
            "ALERT_WEBHOOK_SECRET must be set, at least 16 characters, when ALERT_WEBHOOK_URL is"
        )
    return url, secret


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("REDIS_URL", "").strip()
    if not raw:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got {raw.split('://')[0]!r}"
        )
    return raw


def _origins(env: Mapping[str, str]) -> str | list[str]:
    raw = env.get("CORS_ORIGINS", "").strip()
    if not raw or raw == "*":
        return "*"
    origins = [part.strip().rstrip("/") for part in raw.split(",") if part.strip()]
    for origin in origins:
        if "://" not in origin:
            raise SettingsError(
                f"CORS_ORIGINS must be '*' or a comma-separated list of origins "
                f"such as https://example.com, got {origin!r}"
            )
    return origins


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if raw not in logging.getLevelNamesMapping():
        raise SettingsError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got {raw!r}")
    return raw


def _log_format(env: Mapping[str, str]) -> str:
    raw = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if raw not in ("text", "json"):
        raise SettingsError(f"LOG_FORMAT must be text or json, got {raw!r}")
    return raw


def _websocket_driver(env: Mapping[str, str]) -> str:
    raw = env.get("WEBSOCKET_DRIVER", "").strip().lower() or "lean"
    if raw not in ("lean", "stock"):
        raise SettingsError(f"WEBSOCKET_DRIVER must be lean or stock, got {raw!r}")
    return raw


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    webhook_url, webhook_secret = _webhook(env)
    return Settings(
        port=_int(env, "PORT", 3000, 0, 65535),
        host=env.get("HOST", "").strip() or None,
        redis_url=_redis_url(env),
        cors_origins=_origins(env),
        log_level=_log_level(env),
        log_format=_log_format(env),
        max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 16_384, 1_024, 1_000_000),
        redis_timeout=_seconds(env, "REDIS_TIMEOUT", 2.0),
        redis_max_connections=_int(env, "REDIS_MAX_CONNECTIONS", 32, 1, 10_000),
        code_grace_seconds=_seconds(env, "CODE_GRACE_SECONDS", 300.0),
        trust_proxy=_flag(env, "TRUST_PROXY"),
        alert_webhook_url=webhook_url,
        alert_webhook_secret=webhook_secret,
        code_attempts_per_minute=_int(env, "CODE_ATTEMPTS_PER_MINUTE", 10, 1, 1_000_000),
        shutdown_timeout=_seconds(env, "SHUTDOWN_TIMEOUT", 10.0),
        code_registrations_per_minute=_int(env, "CODE_REGISTRATIONS_PER_MINUTE", 30, 1, 1_000_000),
        pending_codes_per_socket=_int(env, "PENDING_CODES_PER_SOCKET", 2, 1, 1_000),
        pending_codes_per_address=_int(env, "PENDING_CODES_PER_ADDRESS", 100, 1, 1_000_000),
        trackers_per_session=_int(env, "TRACKERS_PER_SESSION", 20, 1, 10_000),
        events_in_flight_per_connection=_int(env, "EVENTS_IN_FLIGHT_PER_CONNECTION", 16, 1, 10_000),
        outbound_buffer_bytes=_int(env, "OUTBOUND_BUFFER_BYTES", 1_048_576, 16_384, 1 << 30),
        attachments_per_packet=_int(env, "ATTACHMENTS_PER_PACKET", 0, 0, 100),
        connections_per_address=_int(env, "CONNECTIONS_PER_ADDRESS", 200, 1, 1_000_000),
        log_lines_per_client_per_minute=_int(env, "LOG_LINES_PER_CLIENT_PER_MINUTE", 5, 1, 10_000),
        websocket_driver=_websocket_driver(env),
    )
