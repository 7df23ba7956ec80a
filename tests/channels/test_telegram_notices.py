"""Contract §9.4: a chat that writes to an assistant whose server is down is told so, once per
outage; when its held messages expire it is told how many. Against a failing dedicated server
and the Bot API stand-in, with the gateway's real limiter and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.notices import OFFLINE, lost
from gateway.app import create_app
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.delivery import ping
from tests.support.gateway import register_user, wipe
from tests.support.redisdump import everything_under, forms
from tests.support.subprocess_gateway import GatewayProcess, environment
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, TgGateway, tg_settings

ALICE = tgs.person(333000333, "Alice", "alice")
BOB = tgs.person(444000444, "Bob", "bob")
FAMILY = tgs.group_chat(-4005550000, "Family")


@contextlib.asynccontextmanager
async def running(tmp_path: Path, fake: FakeTelegram, **overrides: Any) -> AsyncIterator[TgGateway]:
    settings = tg_settings(tmp_path, fake, **overrides)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        yield TgGateway(client, settings, fake)
    finally:
        await client.close()
        await wipe(settings.key_prefix)


def notices(fake: FakeTelegram, chat: dict[str, Any]) -> list[str]:
    return [str(c.params["text"]) for c in fake.sent(chat_id=chat["id"])]


async def replies_settled() -> None:
    """Every reply the gateway decided to send has been sent (or given up)."""
    replies = [t for t in asyncio.all_tasks() if t.get_name() == "telegram-reply"]
    if replies:
        await asyncio.wait(replies, timeout=15)


async def say(tg: TgGateway, chat: dict[str, Any], sender: dict[str, Any], text: str) -> dict[str, Any]:
    update = tgs.text(chat, sender, text)
    assert (await tg.post_update(update)).status == 200
    return update


async def linked_user(tg: TgGateway, dedicated: DedicatedServer, user_id: str) -> dict[str, Any]:
    """A user with Alice's and Bob's private chats linked, its server up while linking."""
    user = await tg.create_user(dedicated, user_id)
    await tg.link_private(dedicated, user_id, ALICE)
    await tg.link_private(dedicated, user_id, BOB)
    return user


def failed_attempts(dedicated: DedicatedServer, user_id: str) -> int:
    tried = len([u for u, _ in dedicated.attempts if u == user_id])
    return tried - len([r for r in dedicated.received if r.user_id == user_id])


async def test_each_chat_is_told_once_per_outage_and_only_after_the_threshold(
    tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer
):
    async with running(tmp_path, fake_tg, offline_notice_after=1.0) as tg:
        user = await linked_user(tg, dedicated, "away")
        alice, bob = tgs.private_chat(ALICE), tgs.private_chat(BOB)
        dedicated.mode["away"] = "error"

        await say(tg, alice, ALICE, "first, the server has just gone")
        await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= 1)
        await say(tg, alice, ALICE, "second, well within the threshold")
        await replies_settled()
        assert notices(fake_tg, alice) == []

        # Retries come 1 s, then 2 s apart: by the third failed attempt the outage is over 1 s old.
        await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= 3)
        for n in range(3):
            await say(tg, alice, ALICE, f"message {n} into the outage")
        await say(tg, bob, BOB, "Bob writes too")
        await say(tg, bob, BOB, "and again")
        await replies_settled()
        assert notices(fake_tg, alice) == [OFFLINE]
        assert notices(fake_tg, bob) == [OFFLINE]

        # The server comes back: everything arrives, in order; a later outage tells the chats again.
        dedicated.mode["away"] = "ok"
        await ping(tg, user["server_token"])
        await dedicated.wait_for(
            lambda: len([e for e in dedicated.events("away") if e["type"] == "telegram.update"]) == 7
        )
        dedicated.mode["away"] = "error"
        before = failed_attempts(dedicated, "away")
        await say(tg, alice, ALICE, "the server fails again")
        await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= before + 3)
        await say(tg, alice, ALICE, "still away?")
        await say(tg, alice, ALICE, "hello?")
        await replies_settled()
        assert notices(fake_tg, alice) == [OFFLINE, OFFLINE]
        assert notices(fake_tg, bob) == [OFFLINE]


async def test_zero_turns_the_offline_notice_off(tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer):
    async with running(tmp_path, fake_tg, offline_notice_after=0.0) as tg:
        await linked_user(tg, dedicated, "away")
        alice = tgs.private_chat(ALICE)
        dedicated.mode["away"] = "error"
        await say(tg, alice, ALICE, "the server has just gone")
        await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= 3)
        for n in range(3):
            await say(tg, alice, ALICE, f"message {n} into the outage")
        await replies_settled()
        assert notices(fake_tg, alice) == []
        assert len(fake_tg.sent()) == 0


async def test_expired_messages_are_counted_to_each_chat_without_their_text(
    tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer
):
    marker = f"marker-{uuid.uuid4().hex}"
    async with running(tmp_path, fake_tg, hold_ttl=2, offline_notice_after=0.0) as tg:
        user = await linked_user(tg, dedicated, "away")
        alice, bob = tgs.private_chat(ALICE), tgs.private_chat(BOB)
        # A group the user's Telegram account added: its messages are the user's too.
        assert (await tg.post_update(tgs.chat_member(FAMILY, ALICE, "left", "member"))).status == 200
        await dedicated.wait_for(
            lambda: len([e for e in dedicated.events("away") if e["type"] == "telegram.linked"]) == 3
        )
        dedicated.mode["away"] = "error"
        for n in range(3):
            await say(tg, alice, ALICE, f"{marker} from Alice {n}")
        await say(tg, bob, BOB, f"{marker} from Bob")
        await say(tg, FAMILY, BOB, f"{marker} in the group")
        await say(tg, FAMILY, ALICE, f"{marker} in the group again")

        stored = await everything_under(tg.services.redis, tg.settings.key_prefix)
        assert any(b":held" in item for item in stored), "where held events came from was inspected"
        for form in forms(marker):
            assert not [item for item in stored if form in item]

        await fake_tg.wait_for(lambda: all(notices(fake_tg, chat) for chat in (alice, bob, FAMILY)), timeout=20)
        await replies_settled()
        assert (
            notices(fake_tg, alice)
            == [lost(3)]
            == ["3 messages could not be delivered: your assistant was offline for too long."]
        )
        assert notices(fake_tg, bob) == [lost(1)]
        assert notices(fake_tg, FAMILY) == [lost(2)]
        for call in fake_tg.sent():
            assert marker not in str(call.params)

        # The server hears of the same six, and nothing of them is left behind.
        dedicated.mode["away"] = "ok"
        await ping(tg, user["server_token"])
        await dedicated.wait_for(lambda: any(e["type"] == "gateway.expired" for e in dedicated.events("away")))
        [expired] = [e for e in dedicated.events("away") if e["type"] == "gateway.expired"]
        assert expired["payload"] == {"count": 6}
        assert not await tg.services.redis.exists(tg.services.keys.user_key("away", "held"))


async def test_delivered_messages_never_count_as_expired(
    tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer
):
    async with running(tmp_path, fake_tg, hold_ttl=2, offline_notice_after=0.0) as tg:
        user = await linked_user(tg, dedicated, "away")
        alice, bob = tgs.private_chat(ALICE), tgs.private_chat(BOB)
        dedicated.mode["away"] = "error"
        await say(tg, bob, BOB, "kept while the server is down, then delivered")
        await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= 1)
        dedicated.mode["away"] = "ok"
        await ping(tg, user["server_token"])
        await dedicated.wait_for(
            lambda: len([e for e in dedicated.events("away") if e["type"] == "telegram.update"]) == 1
        )
        # Down again for longer than the hold TTL: only Alice's two new messages are lost.
        dedicated.mode["away"] = "error"
        await say(tg, alice, ALICE, "this one is lost")
        await say(tg, alice, ALICE, "and this one")
        await fake_tg.wait_for(lambda: bool(notices(fake_tg, alice)), timeout=20)
        await replies_settled()
        assert notices(fake_tg, alice) == [lost(2)]
        assert notices(fake_tg, bob) == []


async def told_offline(http: aiohttp.ClientSession, gateway: GatewayProcess) -> float:
    """How many offline notices this process decided to send, from its own /metrics."""
    async with http.get(f"{gateway.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    found = re.search(r'^ally_telegram_notices_total\{kind="offline"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
async def test_two_processes_receiving_one_chats_messages_tell_it_once(
    tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer
):
    settings = tg_settings(tmp_path, fake_tg)
    env = environment(
        settings,
        ALLY_TELEGRAM_BOT_TOKEN=fake_tg.token,
        ALLY_TELEGRAM_WEBHOOK_SECRET=SECRET,
        ALLY_TELEGRAM_API_URL=fake_tg.url,
        ALLY_OFFLINE_NOTICE_AFTER="1",
    )
    first = GatewayProcess(env, tmp_path / "first.log")
    second = GatewayProcess({**env, "ALLY_DATA_DIR": str(tmp_path / "second")}, tmp_path / "second.log")
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    hook = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    try:
        # Two interpreters start at once on a shared machine: give them time.
        await asyncio.gather(first.start(timeout=60), second.start(timeout=60))
        async with aiohttp.ClientSession() as http:

            async def post(gateway: GatewayProcess, update: dict[str, Any]) -> None:
                url = f"{gateway.url}/telegram/webhook/{tgs.BOT_ID}"
                async with http.post(url, json=update, headers=hook) as resp:
                    assert resp.status == 200

            await register_user(http, dedicated, "away", base=first.url, admin_token=settings.admin_token)
            for person, gateway in ((ALICE, first), (BOB, second)):
                async with http.post(f"{gateway.url}/admin/v1/users/away/telegram/link", headers=admin) as resp:
                    code = (await resp.json())["code"]
                await post(gateway, tgs.start(tgs.private_chat(person), person, code))
            await dedicated.wait_for(
                lambda: len([e for e in dedicated.events("away") if e["type"] == "telegram.linked"]) == 2,
                timeout=20,
            )

            dedicated.mode["away"] = "error"
            await post(first, tgs.text(tgs.private_chat(ALICE), ALICE, "the server has just gone"))
            await dedicated.wait_for(lambda: failed_attempts(dedicated, "away") >= 3, timeout=20)
            # Both chats write to both processes at once: every write races for the one notice.
            writes = [
                post((first, second)[n % 2], tgs.text(tgs.private_chat(person), person, f"message {n}"))
                for n in range(6)
                for person in (ALICE, BOB)
            ]
            await asyncio.gather(*writes)
            await fake_tg.wait_for(
                lambda: bool(notices(fake_tg, tgs.private_chat(ALICE)) and notices(fake_tg, tgs.private_chat(BOB))),
                timeout=20,
            )
            # Every decision was taken before its webhook answered: the processes' own counts are final.
            assert await told_offline(http, first) + await told_offline(http, second) == 2
        assert notices(fake_tg, tgs.private_chat(ALICE)) == [OFFLINE]
        assert notices(fake_tg, tgs.private_chat(BOB)) == [OFFLINE]
    finally:
        first.stop()
        second.stop()
        await wipe(settings.key_prefix)
