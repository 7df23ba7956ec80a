"""`python -m gateway serve` with a bad configuration: one line naming the variable, no
traceback, a non-zero exit, and nothing started."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from foundation.config import load
from foundation.errors import ConfigError
from tests.support.cli import serve

GOOD_KEYS = "k1:" + base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()
PROD = {
    "ALLY_ENV": "production",
    "ALLY_PUBLIC_URL": "https://gw.example",
    "ALLY_ADMIN_TOKEN": "a-production-admin-token-0123456789",
    "ALLY_MASTER_KEYS": GOOD_KEYS,
    "ALLY_REDIS_URL": "redis://127.0.0.1:1/0",
}


CASES = [
    ({"ALLY_ENV": "staging"}, "ALLY_ENV"),
    ({"PORT": "http"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"ALLY_REDIS_URL": "mysql://db"}, "ALLY_REDIS_URL"),
    ({"ALLY_REDIS_CLUSTER": "maybe"}, "ALLY_REDIS_CLUSTER"),
    ({"ALLY_REDIS_CLUSTER": "true"}, "ALLY_REDIS_CLUSTER"),
    ({"ALLY_MASTER_KEYS": "k1:c2hvcnQ"}, "ALLY_MASTER_KEYS"),
    ({"ALLY_MASTER_KEYS": "no key here"}, "ALLY_MASTER_KEYS"),
    ({"ALLY_ADMIN_TOKEN": "short"}, "ALLY_ADMIN_TOKEN"),
    ({"ALLY_HOLD_TTL": "a week"}, "ALLY_HOLD_TTL"),
    ({"ALLY_HOLD_TTL": "0"}, "ALLY_HOLD_TTL"),
    ({"ALLY_PUBLIC_URL": "gw.example"}, "ALLY_PUBLIC_URL"),
    ({"ALLY_ALLOWED_RETURN_ORIGINS": "https://app.example/path"}, "ALLY_ALLOWED_RETURN_ORIGINS"),
    ({"ALLY_AI_MONTHLY_TOKENS": "-5"}, "ALLY_AI_MONTHLY_TOKENS"),
    # Production refuses what development would generate or allow.
    ({**PROD, "ALLY_ADMIN_TOKEN": ""}, "ALLY_ADMIN_TOKEN"),
    ({**PROD, "ALLY_MASTER_KEYS": ""}, "ALLY_MASTER_KEYS"),
    ({**PROD, "ALLY_PUBLIC_URL": "http://gw.example"}, "ALLY_PUBLIC_URL"),
    ({"ALLY_TELEGRAM_MODE": "push"}, "ALLY_TELEGRAM_MODE"),
    # A laptop with a real bot and no https address: Telegram would never call the webhook.
    ({"ALLY_TELEGRAM_BOT_TOKEN": "123456789:AAEexampleexampleexampleexampleexam"}, "ALLY_TELEGRAM_MODE=polling"),
    ({"ALLY_WORKERS": "0"}, "ALLY_WORKERS"),
    ({"ALLY_WORKERS": "all cores"}, "ALLY_WORKERS"),
    ({"ALLY_WORKERS": "257"}, "ALLY_WORKERS"),
]


@pytest.mark.parametrize(("env", "variable"), CASES)
def test_a_bad_setting_is_refused_naming_it(env: dict[str, str], variable: str):
    with pytest.raises(ConfigError, match=variable) as info:
        load(env)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize(("env", "variable"), [CASES[i] for i in (0, 3, 6, 14, 15, 16, 18)])
def test_a_bad_setting_stops_serve_with_one_line_naming_it(env: dict[str, str], variable: str, tmp_path: Path):
    result = serve(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    # A refused start generates nothing: no development secrets, no embedded Redis.
    assert not (tmp_path / "data" / "redis").exists()


@pytest.mark.slow
def test_a_secret_in_a_bad_value_is_not_echoed(tmp_path: Path):
    secret = "k1:" + base64.urlsafe_b64encode(b"s" * 31).rstrip(b"=").decode()
    result = serve({"ALLY_MASTER_KEYS": secret}, tmp_path)
    assert result.returncode == 2
    assert secret.split(":")[1] not in result.stderr


@pytest.mark.slow
def test_a_taken_port_is_one_line_too(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve({"PORT": str(port), "ALLY_REDIS_URL": "redis://127.0.0.1:6379/0"}, tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) >= 1
    assert "Traceback" not in result.stderr
    assert "ally-gateway:" in result.stderr.strip().splitlines()[-1]


def test_one_process_unless_told_otherwise():
    assert load({}).workers == 1
    assert load({"ALLY_WORKERS": "4"}).workers == 4
