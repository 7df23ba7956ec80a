from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from foundation.config import Settings
from foundation.redis_keys import Keys
from foundation.vault import Vault
from routing.registry import Registry
from tests.support.gateway import REDIS_URL, make_settings, random_public_key, wipe
from tests.support.redis_servers import RedisServer
from tests.support.subprocess_gateway import ROOT, environment

BOT_TOKEN = "7012345678:AAF3kq9wZx-DoctorOnly_a1B2c3D4e5F6g7H8i9J0"
PUBLIC_URL = "https://gw.example"
EXPECTED_WEBHOOK = f"{PUBLIC_URL}/telegram/webhook/7012345678"

pytestmark = pytest.mark.slow


class BotApi:
    """getMe and getWebhookInfo as the Bot API answers them."""

    def __init__(self) -> None:
        self.webhook: dict[str, Any] = {
            "url": EXPECTED_WEBHOOK,
            "has_custom_certificate": False,
            "pending_update_count": 3,
            "max_connections": 40,
            "ip_address": "149.154.167.220",
            "allowed_updates": ["message", "edited_message", "callback_query", "my_chat_member"],
        }
        self.token = BOT_TOKEN
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        if method == "getMe":
            result: dict[str, Any] = {
                "id": 7012345678,
                "is_bot": True,
                "first_name": "Ally",
                "username": "ally_doctor_bot",
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            }
            return web.json_response({"ok": True, "result": result})
        if method == "getWebhookInfo":
            return web.json_response({"ok": True, "result": self.webhook})
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApi]:
    api = BotApi()
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", api.handle)
    api.server = TestServer(app, port=0)
    await api.server.start_server()
    try:
        yield api
    finally:
        await api.server.close()


async def doctor(settings: Settings, **extra: str) -> tuple[int, str]:
    env = environment(settings, ALLY_PUBLIC_URL=PUBLIC_URL, ALLY_TELEGRAM_BOT_TOKEN=BOT_TOKEN, **extra)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "doctor"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout.decode() + proc.stderr.decode()
    assert BOT_TOKEN.split(":")[1] not in output  # the report never shows the bot token
    return proc.returncode, output


async def make_user(settings: Settings, url: str, user_id: str) -> None:
    redis = Redis.from_url(url)
    keys = Keys(settings.key_prefix)
    await Registry(redis, keys, Vault(redis, keys, settings.master_keys)).put(
        user_id, "https://srv.example", random_public_key()
    )
    await redis.aclose()


async def test_a_healthy_gateway_gets_a_clean_report(tmp_path: Path, bot_api: BotApi):
    redis = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(redis.start)
    try:
        settings = make_settings(tmp_path, redis_url=redis.url)
        await make_user(settings, redis.url, "healthy")
        status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url)
    finally:
        await asyncio.to_thread(redis.stop)
    assert status == 0, output
    assert "AOF persistence on" in output
    assert "1 data key(s), all open under the ring" in output
    assert "bot @ally_doctor_bot" in output
    assert f"webhook {EXPECTED_WEBHOOK}, 3 update(s) pending" in output
    assert "0 problem(s)" in output


async def test_every_problem_is_named_and_the_exit_status_says_so(tmp_path: Path, bot_api: BotApi):
    settings = make_settings(tmp_path, redis_url=REDIS_URL)  # the shared test Redis runs without AOF
    await make_user(settings, REDIS_URL, "fine")
    redis = Redis.from_url(REDIS_URL)
    # A data key wrapped by a master key that is no longer in the ring.
    await redis.set(Keys(settings.key_prefix).dek("orphaned"), b"old1." + os.urandom(60))
    await redis.aclose()
    bot_api.webhook.update(
        url="https://old-gw.example/telegram/webhook/7012345678",
        pending_update_count=250,
        last_error_date=int(time.time()) - 180,
        last_error_message="Wrong response from the webhook: 503 Service Unavailable",
    )
    try:
        status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url, ALLY_GOOGLE_CLIENT_ID="client-1")
    finally:
        await wipe(settings.key_prefix)
    assert status == 1
    failures = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert any("AOF is off" in line for line in failures), output
    assert any("kids missing from ALLY_MASTER_KEYS: old1 (1)" in line for line in failures), output
    assert any("webhook points to https://old-gw.example" in line for line in failures), output
    assert any("last webhook error 3 min ago: Wrong response from the webhook: 503" in line for line in failures)
    assert any("ALLY_GOOGLE_CLIENT_SECRET is unset" in line for line in failures), output
    assert "250 updates pending" in output


async def test_refused_bot_token_and_unreachable_redis_fail(tmp_path: Path, bot_api: BotApi):
    bot_api.token = "other"
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url)
    assert status == 1
    assert "FAIL  redis" in output
    assert "does not answer" in output
    assert "getMe refused: 401 Unauthorized" in output


async def test_a_bad_setting_is_reported_not_raised(tmp_path: Path):
    settings = make_settings(tmp_path)
    status, output = await doctor(settings, ALLY_HOLD_TTL="soon")
    assert status == 1
    assert "FAIL  configuration  ALLY_HOLD_TTL must be a whole number" in output
    assert "Traceback" not in output


async def test_run_away_from_the_data_dir_it_says_where_it_looked(tmp_path: Path):
    # The embedded default (no ALLY_REDIS_URL) with a relative ALLY_DATA_DIR that is not there.
    settings = make_settings(tmp_path, redis_url=None)
    status, output = await doctor(settings, ALLY_DATA_DIR=".ally-not-here")
    assert status == 1
    assert re.search(rf"FAIL +data dir +no data dir at {re.escape(str(ROOT / '.ally-not-here'))} ", output)
    assert f"relative to the working directory {ROOT}" in output
    assert "Traceback" not in output


async def test_polling_mode_is_checked_for_a_webhook_that_takes_the_updates(tmp_path: Path, bot_api: BotApi):
    settings = make_settings(tmp_path)
    status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url, ALLY_TELEGRAM_MODE="polling")
    assert status != 0
    assert "ALLY_TELEGRAM_MODE=polling, but a webhook is set" in output and "409 Conflict" in output
    bot_api.webhook.update(url="", pending_update_count=2)
    status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url, ALLY_TELEGRAM_MODE="polling")
    assert "long polling (no webhook), 2 update(s) waiting at Telegram" in output


async def test_ack_replicas_without_a_replica_is_a_failure_that_says_what_to_do(tmp_path: Path, bot_api: BotApi):
    redis = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(redis.start)
    try:
        settings = make_settings(tmp_path, redis_url=redis.url)
        status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url, ALLY_ACK_REPLICAS="1")
        assert status == 1
        failures = [line for line in output.splitlines() if line.startswith("FAIL")]
        assert any("wait for 1 replica(s) (ALLY_ACK_REPLICAS) but primary redis has 0" in f for f in failures), output
        status, output = await doctor(settings, ALLY_TELEGRAM_API_URL=bot_api.url)
        assert status == 0 and "no replica: acknowledged writes live on one node" in output, output
    finally:
        await asyncio.to_thread(redis.stop)
