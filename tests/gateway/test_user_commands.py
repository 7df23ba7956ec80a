from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from foundation.config import Settings
from foundation.redis_keys import Keys
from tests.support.export import validate
from tests.support.gateway import REDIS_URL, make_settings, random_public_key, wipe
from tests.support.redisdump import containing, dump
from tests.support.subprocess_gateway import ROOT, environment
from tests.support.telegram import USERNAME, FakeTelegram

pytestmark = pytest.mark.slow


def telegram_env(settings: Settings) -> dict[str, str]:
    if not settings.telegram_bot_token:
        return {}
    return {
        "ALLY_TELEGRAM_BOT_TOKEN": settings.telegram_bot_token,
        "ALLY_TELEGRAM_API_URL": settings.telegram_api_url,
        "ALLY_TELEGRAM_WEBHOOK_SECRET": settings.telegram_webhook_secret or "",
    }


async def cli(settings: Settings, *args: str) -> tuple[int, Any, str]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "user", *args],
        env=environment(settings, **telegram_env(settings)),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


async def test_operator_commands_create_show_export_and_erase_a_user(tmp_path: Path):
    settings = make_settings(tmp_path)
    key = random_public_key()
    try:
        status, created, _ = await cli(
            settings, "create", "op-user", "--server-url", "https://srv.example/ally", f"--public-key={key}"
        )
        assert status == 0
        assert created["created"] is True
        assert created["server_token"].startswith("ast.op-user.")
        assert created["webhook_secret"].startswith("whsec_")

        status, updated, _ = await cli(
            settings, "create", "op-user", "--server-url", "https://other.example", f"--public-key={key}"
        )
        assert status == 0
        assert updated == {"user_id": "op-user", "server_url": "https://other.example", "created": False}

        status, shown, _ = await cli(settings, "show", "op-user")
        assert status == 0
        assert shown["server_url"] == "https://other.example"
        assert shown["queue"]["pending"] == 0

        status, exported, _ = await cli(settings, "export", "op-user")
        assert status == 0
        validate(exported)
        assert created["server_token"] not in json.dumps(exported)

        status, _, err = await cli(settings, "link", "op-user")
        assert status == 1
        assert "telegram_disabled" in err

        status, erased, _ = await cli(settings, "delete", "op-user")
        assert status == 0
        assert erased == {"user_id": "op-user", "status": "erased"}
        redis = Redis.from_url(REDIS_URL)
        try:
            assert containing(await dump(redis, settings.key_prefix), b"op-user") == []
        finally:
            await redis.aclose()

        status, _, err = await cli(settings, "show", "op-user")
        assert status == 1
        assert "user_not_found" in err
    finally:
        await wipe(settings.key_prefix)


async def test_operator_commands_refuse_bad_input_with_one_line(tmp_path: Path):
    settings = make_settings(tmp_path)
    status, _, err = await cli(settings, "show", "bad id")
    assert status == 1
    assert err.strip() == "ally-gateway: invalid_user_id: user_id must match ^[A-Za-z0-9_-]{1,64}$"
    status, _, err = await cli(settings, "create", "u1", "--server-url", "ftp://x", "--public-key", "k")
    assert status == 1
    assert "invalid_server_url" in err
    assert "Traceback" not in err
    redis = Redis.from_url(REDIS_URL)
    try:
        assert await redis.exists(Keys(settings.key_prefix).user("u1")) == 0
    finally:
        await redis.aclose()


async def test_user_link_gives_a_telegram_deep_link(tmp_path: Path):
    fake = FakeTelegram()
    await fake.start()
    settings = make_settings(
        tmp_path, telegram_bot_token=fake.token, telegram_api_url=fake.url, telegram_webhook_secret="s-1234567890"
    )
    try:
        status, _, _ = await cli(
            settings, "create", "linker", "--server-url", "https://srv.example", f"--public-key={random_public_key()}"
        )
        assert status == 0
        status, link, err = await cli(settings, "link", "linker")
        assert status == 0, err
        assert link["url"] == f"https://t.me/{USERNAME}?start={link['code']}"
        # An operator command leaves the webhook to the serving processes.
        assert fake.sent("setWebhook") == []
    finally:
        await fake.close()
        await wipe(settings.key_prefix)


async def test_a_public_key_that_starts_with_a_dash_is_taken_in_the_equals_form(tmp_path: Path):
    settings = make_settings(tmp_path)
    key = base64.urlsafe_b64encode(b"\xf8" + os.urandom(31)).rstrip(b"=").decode()
    assert key.startswith("-")
    try:
        status, created, err = await cli(
            settings, "create", "dash-key", "--server-url", "https://srv.example", f"--public-key={key}"
        )
        assert status == 0, err
        assert created["created"] is True
        # The spaced form reads the key as an option: refused with argparse's message, nothing stored.
        status, _, err = await cli(
            settings, "create", "dash-key-2", "--server-url", "https://srv.example", "--public-key", key
        )
        assert status == 2 and "--public-key" in err
        status, _, _ = await cli(settings, "show", "dash-key-2")
        assert status != 0
    finally:
        await wipe(settings.key_prefix)
