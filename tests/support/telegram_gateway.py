"""A test gateway with the Telegram channel wired to the Bot API stand-in."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from channels.telegram.channel import TELEGRAM, Telegram
from foundation.config import Settings
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings, serve
from tests.support.telegram import FakeTelegram

SECRET = "tg-webhook_secret-0123456789"


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
    async with serve(settings) as gateway:
        yield TgGateway(gateway.client, settings, fake)


def updates(dedicated: DedicatedServer, user_id: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in dedicated.events(user_id) if e["type"] == "telegram.update"]


def of_type(dedicated: DedicatedServer, user_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in dedicated.events(user_id) if e["type"] == kind]


async def linked(tg: TgGateway, dedicated: DedicatedServer, user_id: str, person: dict[str, Any]) -> dict[str, str]:
    created = await tg.create_user(dedicated, user_id)
    await tg.link_private(dedicated, user_id, person)
    return tg.server_headers(created["server_token"])
