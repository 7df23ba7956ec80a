from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.channel import TELEGRAM, Telegram
from gateway.app import create_app
from gateway.config import Settings
from tests.conftest import Gateway, make_settings, wipe
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram import FakeTelegram

SECRET = "tg-webhook_secret-0123456789"


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclasses.dataclass
class TgGateway(Gateway):
    fake: FakeTelegram = dataclasses.field(default_factory=FakeTelegram)

    @property
    def channel(self) -> Telegram:
        app = self.client.app
        assert app is not None
        channel: Telegram = app[TELEGRAM]
        return channel

    async def post_update(self, update: dict[str, Any], secret: str | None = SECRET) -> Any:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return await self.client.post(f"/telegram/webhook/{tgs.BOT_ID}", json=update, headers=headers)

    async def link_private(self, dedicated: DedicatedServer, user_id: str, tg_user: dict[str, Any]) -> None:
        """Open the user's deep link from this Telegram account; wait for telegram.linked."""
        resp = await self.admin("POST", f"/admin/v1/users/{user_id}/telegram/link")
        assert resp.status == 200, await resp.text()
        code = (await resp.json())["code"]
        before = len([e for e in dedicated.events(user_id) if e["type"] == "telegram.linked"])
        resp = await self.post_update(tgs.start(tgs.private_chat(tg_user), tg_user, code))
        assert resp.status == 200
        await dedicated.wait_for(
            lambda: len([e for e in dedicated.events(user_id) if e["type"] == "telegram.linked"]) > before
        )

    def server_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def tg_settings(tmp_path: Path, fake: FakeTelegram, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "telegram_webhook_secret": SECRET,
        "telegram_api_url": fake.url,
        **overrides,
    }
    return make_settings(tmp_path, **values)


async def serve_tg(settings: Settings, fake: FakeTelegram) -> AsyncIterator[TgGateway]:
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        yield TgGateway(client, settings, fake)
    finally:
        await client.close()
        await wipe(settings.key_prefix)


@pytest.fixture
async def tg(tmp_path: Path, fake_tg: FakeTelegram) -> AsyncIterator[TgGateway]:
    async for gateway in serve_tg(tg_settings(tmp_path, fake_tg), fake_tg):
        yield gateway
