"""Long polling (`ALLY_TELEGRAM_MODE=polling`, contract §9.4): getUpdates feeds the webhook's ingress."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from foundation.config import load
from foundation.errors import ConfigError
from gateway.app import create_app
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import TgGateway, of_type, tg_settings, updates

ALICE = tgs.person(111000111, "Alice", "alice")
TOKEN = "123456789:AAEexampleexampleexampleexampleexam"


@pytest.fixture
async def polling(tmp_path: Path, fake_tg: FakeTelegram) -> AsyncIterator[TgGateway]:
    # A webhook left over from an earlier webhook-mode deployment: polling must remove it.
    fake_tg.webhook = {"url": "https://old.example/telegram/webhook/1"}
    settings = tg_settings(tmp_path, fake_tg, telegram_mode="polling", telegram_poll_lease=2.0)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        yield TgGateway(client, settings, fake_tg)
    finally:
        await client.close()
        await wipe(settings.key_prefix)


def polls(fake: FakeTelegram) -> list[dict[str, str]]:
    return [c.params for c in fake.sent("getUpdates")]


async def test_polling_links_and_delivers_updates_in_order_and_acknowledges_them(
    polling: TgGateway, dedicated: DedicatedServer
):
    fake = polling.fake
    await fake.wait_for(lambda: bool(polls(fake)))
    assert fake.sent("deleteWebhook") and fake.webhook == {} and not fake.sent("setWebhook")
    assert int(polls(fake)[0]["timeout"]) >= 25
    await polling.create_user(dedicated, "u1")
    code = (await (await polling.admin("POST", "/admin/v1/users/u1/telegram/link")).json())["code"]
    chat = tgs.private_chat(ALICE)
    start = tgs.start(chat, ALICE, code)
    sent = [tgs.text(chat, ALICE, f"message {n}") for n in range(5)]
    fake.push(start, *sent)
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == 5)
    assert len(of_type(dedicated, "u1", "telegram.linked")) == 1
    assert updates(dedicated, "u1") == sent
    # Acknowledged only after queueing: the next call's offset is past the last update.
    last = sent[-1]["update_id"]
    await fake.wait_for(lambda: any(int(p.get("offset", 0)) == last + 1 for p in polls(fake)))
    assert fake.updates == []


async def test_an_unreadable_update_is_skipped_not_polled_forever(polling: TgGateway, dedicated: DedicatedServer):
    fake = polling.fake
    await polling.create_user(dedicated, "u1")
    await fake.wait_for(lambda: bool(polls(fake)))
    code = (await (await polling.admin("POST", "/admin/v1/users/u1/telegram/link")).json())["code"]
    chat = tgs.private_chat(ALICE)
    start = tgs.start(chat, ALICE, code)
    broken = {"update_id": tgs.next_update_id(), "message": {"chat": "not a chat"}}
    after = tgs.text(chat, ALICE, "after the broken one")
    fake.push(start, broken, after)
    await dedicated.wait_for(lambda: updates(dedicated, "u1") == [after])
    await fake.wait_for(lambda: fake.updates == [])


async def test_a_webhook_set_elsewhere_is_reported_and_not_fought_over(
    polling: TgGateway, caplog: pytest.LogCaptureFixture
):
    fake = polling.fake
    await fake.wait_for(lambda: bool(polls(fake)))
    deletes = len(fake.sent("deleteWebhook"))
    with caplog.at_level(logging.ERROR, logger="channels.telegram.polling"):
        # Another deployment in webhook mode takes the bot: Telegram answers getUpdates with 409.
        fake.webhook = {"url": "https://other.example/hook"}
        fake.push(tgs.text(tgs.private_chat(ALICE), ALICE, "to the other deployment"))
        await fake.wait_for(lambda: any("conflict" in r.getMessage() for r in caplog.records), timeout=40)
    message = next(r.getMessage() for r in caplog.records if "conflict" in r.getMessage())
    assert "ALLY_TELEGRAM_MODE=polling" in message and "webhook" in message
    assert len(fake.sent("deleteWebhook")) == deletes
    assert fake.webhook == {"url": "https://other.example/hook"}


async def test_polling_starts_only_once_the_webhook_is_gone(tmp_path: Path, fake_tg: FakeTelegram):
    fake_tg.webhook = {"url": "https://old.example/telegram/webhook/1"}
    fake_tg.fail("deleteWebhook", 500, "Internal Server Error", times=3)  # one call's every attempt
    settings = tg_settings(tmp_path, fake_tg, telegram_mode="polling")
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        await fake_tg.wait_for(lambda: bool(polls(fake_tg)), timeout=20)
        assert len(fake_tg.sent("deleteWebhook")) == 4 and fake_tg.webhook == {}
    finally:
        await client.close()
        await wipe(settings.key_prefix)


def test_the_mode_is_checked_at_start():
    base = {"ALLY_TELEGRAM_BOT_TOKEN": TOKEN, "ALLY_PUBLIC_URL": "https://gw.example"}
    assert load(base).telegram_mode == "webhook"
    assert load({**base, "ALLY_TELEGRAM_MODE": "polling"}).telegram_mode == "polling"
    with pytest.raises(ConfigError, match="ALLY_TELEGRAM_MODE must be webhook or polling"):
        load({**base, "ALLY_TELEGRAM_MODE": "pull"})
    # Telegram sends webhooks only to https: a laptop without one is told to poll.
    laptop = {**base, "ALLY_PUBLIC_URL": "http://127.0.0.1:8080"}
    with pytest.raises(ConfigError, match="ALLY_TELEGRAM_MODE=polling"):
        load(laptop)
    assert load({**laptop, "ALLY_TELEGRAM_MODE": "polling"}).telegram_mode == "polling"
    # A self-hosted or local Bot API server may call plain http.
    assert load({**laptop, "ALLY_TELEGRAM_API_URL": "http://127.0.0.1:8081"}).telegram_mode == "webhook"
