"""`POST /telegram/webhook/{bot_id}` under hostile input: never a 5xx or an internal detail,
a JSON error for every refusal, and nothing queued or sent for anything refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.app import create_app
from tests.hostile import strategies as hs
from tests.hostile.checks import assert_error_json, assert_sane, read
from tests.hostile.world import World
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, TgGateway, tg_settings

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CAROL = tgs.person(333000333, "Carol", "carol")
STRANGER = tgs.person(444000444, "Dave", "dave")


def samples() -> list[dict[str, Any]]:
    """Valid updates of every kind the routing code looks into, from a linked and an unlinked chat."""
    chat, group = tgs.private_chat(CAROL), tgs.group_chat(-100333000333)
    photo = {"file_id": "AgACAgIAAxkBAAIBZ2V", "file_unique_id": "AQADq", "width": 90, "height": 67}
    return [
        tgs.text(chat, CAROL, "hello"),
        tgs.text(tgs.private_chat(STRANGER), STRANGER, "who is this"),
        tgs.start(chat, CAROL, "A" * 32),
        tgs.message(chat, CAROL, photo=[photo], caption="look"),
        tgs.message(group, CAROL, new_chat_members=[tgs.BOT_USER]),
        tgs.message(group, CAROL, migrate_to_chat_id=-1001333000333),
        tgs.message(group, CAROL, left_chat_member=tgs.BOT_USER),
        tgs.chat_member(group, CAROL, "left", "member"),
        tgs.chat_member(chat, CAROL, "member", "kicked"),
        {
            "update_id": tgs.next_update_id(),
            "callback_query": {"id": "4382bfdwdsb323b2d9", "from": CAROL, "chat_instance": "42", "data": "x"},
        },
        {
            "update_id": tgs.next_update_id(),
            "edited_message": {
                "message_id": 7,
                "from": CAROL,
                "chat": chat,
                "date": int(time.time()),
                "edit_date": int(time.time()),
                "text": "edited",
            },
        },
    ]


@pytest.mark.asyncio(loop_scope="package")
@FUZZ
@given(
    bot_id=st.one_of(st.just(str(tgs.BOT_ID)), hs.path_parts),
    secret=st.one_of(st.none(), hs.header_values, st.just(SECRET + "x"), st.just(SECRET[:-1])),
    body=hs.bodies(*samples()),
    content_type=hs.content_types,
)
async def test_without_the_secret_or_for_another_bot_nothing_is_read_queued_or_sent(
    world: World, bot_id: str, secret: str | None, body: bytes, content_type: str | None
):
    if bot_id == str(tgs.BOT_ID) and secret == SECRET:
        return
    headers = {}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    if content_type is not None:
        headers["Content-Type"] = content_type
    before = await world.effects()
    url = URL(f"/telegram/webhook/{bot_id}", encoded=True)
    answer = await read(await world.client.post(url, data=body, headers=headers))
    assert_sane(answer, world.secrets)
    assert answer.status in (401, 404), (answer.status, answer.body)
    assert_error_json(answer)
    assert await world.effects() == before


@pytest.fixture
async def linked(tmp_path: Path, dedicated: DedicatedServer) -> AsyncIterator[TgGateway]:
    """A gateway of its own: accepted updates may link, unlink and move chats."""
    fake = FakeTelegram()
    await fake.start()
    settings = tg_settings(tmp_path, fake)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    tg = TgGateway(client, settings, fake)
    try:
        await tg.create_user(dedicated, "carol")
        await tg.link_private(dedicated, "carol", CAROL)
        yield tg
    finally:
        await client.close()
        await wipe(settings.key_prefix)
        await fake.close()


async def _queued(tg: TgGateway) -> int:
    return int(await tg.services.redis.hget(tg.services.keys.counters("carol"), "events_in") or 0)


async def _settled(tg: TgGateway) -> int:
    """Bot API calls so far, once the replies earlier updates asked for have gone out."""
    await asyncio.gather(*tg.channel._tasks, return_exceptions=True)
    return len(tg.fake.calls)


@FUZZ
@given(body=hs.bodies(*samples()), content_type=hs.content_types)
async def test_with_the_secret_garbage_is_a_4xx_and_queues_nothing(
    linked: TgGateway, body: bytes, content_type: str | None
):
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    if content_type is not None:
        headers["Content-Type"] = content_type
    before, calls = await _queued(linked), await _settled(linked)
    resp = await linked.client.post(f"/telegram/webhook/{tgs.BOT_ID}", data=body, headers=headers)
    answer = await read(resp)
    assert_sane(answer, (tgs.TOKEN.encode(), SECRET.encode()))
    assert answer.status in (200, 400, 413), (answer.status, answer.body)
    if answer.status != 200:
        assert_error_json(answer)
        assert await _queued(linked) == before
        assert await _settled(linked) == calls
    else:
        assert answer.json == {"ok": True}
        # One update, at most one link change and the unlink of a chat it replaced.
        assert await _queued(linked) - before <= 3
