"""Settings come from the environment once; a bad value names its variable."""

import subprocess
import sys

import pytest

from server.settings import Settings, SettingsError, load
from tests.support.processes import REPO_ROOT


def test_defaults_match_the_node_server() -> None:
    settings = load({})
    assert settings == Settings()
    assert (settings.port, settings.host, settings.redis_url, settings.cors_origins) == (
        3000,
        None,
        None,
        "*",
    )


def test_every_variable_is_read() -> None:
    settings = load(
        {
            "PORT": "8080",
            "HOST": "127.0.0.1",
            "REDIS_URL": "redis://default:pw@redis.railway.internal:6379",
            "CORS_ORIGINS": "https://localhost, capacitor://localhost/",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "MAX_MESSAGE_BYTES": "4096",
            "REDIS_TIMEOUT": "0.5",
            "REDIS_MAX_CONNECTIONS": "8",
            "CODE_GRACE_SECONDS": "60",
        }
    )
    assert settings.port == 8080 and settings.host == "127.0.0.1"
    assert settings.redis_url == "redis://default:pw@redis.railway.internal:6379"
    assert settings.cors_origins == ["https://localhost", "capacitor://localhost"]
    assert settings.log_level == "DEBUG" and settings.log_format == "json"
    assert settings.max_message_bytes == 4096 and settings.redis_timeout == 0.5
    assert settings.redis_max_connections == 8 and settings.code_grace_seconds == 60
    assert load({"WEBSOCKET_DRIVER": " Stock "}).websocket_driver == "stock"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("REDIS_URL", "localhost:6379"),
        ("CORS_ORIGINS", "example.com"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("MAX_MESSAGE_BYTES", "1"),
        ("REDIS_TIMEOUT", "nan"),
        ("CODE_GRACE_SECONDS", "-5"),
        ("SHUTDOWN_TIMEOUT", "0"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("WEBSOCKET_DRIVER", "fast"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name} "):
        load({name: value})


def test_the_server_refuses_to_start_with_a_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        env={"PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "PORT must be a whole number" in result.stderr
