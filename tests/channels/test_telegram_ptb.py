"""python-telegram-bot 22.8, unchanged, on a dedicated server configured as docs/telegram.md
shows: the real library against a real gateway on loopback and the local Bot API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputMediaDocument, InputMediaPhoto
from telegram.request import HTTPXRequest

from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram_gateway import TgGateway

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")


def server_bot(gateway: str, server_token: str) -> telegram.Bot:
    """Exactly the configuration docs/telegram.md gives a dedicated server."""
    return telegram.Bot(
        token="ally:gateway",  # any text: the gateway holds the real token
        base_url=lambda _: f"{gateway}/v1/telegram",
        base_file_url=lambda _: f"{gateway}/v1/telegram/files",
        request=HTTPXRequest(httpx_kwargs={"headers": {"Authorization": f"Bearer {server_token}"}}),
    )


@pytest.fixture
async def alice_bot(tg: TgGateway, dedicated: DedicatedServer) -> AsyncIterator[telegram.Bot]:
    created = await tg.create_user(dedicated, "ua")
    await tg.link_private(dedicated, "ua", ALICE)
    bot = server_bot(str(tg.client.make_url("")).rstrip("/"), created["server_token"])
    async with bot:
        yield bot


async def test_initialize_learns_the_bots_public_identity_and_nothing_more(alice_bot: telegram.Bot, tg: TgGateway):
    assert alice_bot.id == tgs.BOT_ID and alice_bot.username == tgs.USERNAME
    assert alice_bot.bot.is_bot and alice_bot.bot.first_name == "Ally"
    me = await alice_bot.get_me()
    assert me.to_dict().keys() <= {
        "id",
        "is_bot",
        "first_name",
        "last_name",
        "username",
        "can_join_groups",
        "can_read_all_group_messages",
        "supports_inline_queries",
        "can_connect_to_business",
        "has_main_web_app",
    }
    # Answered from the gateway's own copy: the server's getMe costs Telegram nothing.
    assert not [c for c in tg.fake.calls if c.method == "getMe" and c.at > tg.fake.calls[0].at]


async def test_send_edit_react_and_stream_a_draft(alice_bot: telegram.Bot, tg: TgGateway):
    chat = ALICE["id"]
    assert await alice_bot.send_chat_action(chat, "typing") is True
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="yes")]])
    sent = await alice_bot.send_message(chat, "Hello *there*", reply_markup=markup)
    assert sent.text == "Hello *there*" and sent.chat.id == chat and sent.reply_markup == markup
    assert await alice_bot.send_message_draft(chat, draft_id=42, text="thinking…") is True
    edited = await alice_bot.edit_message_text("Hello again", chat_id=chat, message_id=sent.message_id)
    assert isinstance(edited, telegram.Message) and edited.text == "Hello again"
    assert await alice_bot.set_message_reaction(chat, sent.message_id, "👍") is True
    assert await alice_bot.pin_chat_message(chat, sent.message_id) is True
    reply = await alice_bot.send_message(chat, "a reply", reply_parameters=telegram.ReplyParameters(sent.message_id))
    assert reply.reply_to_message is not None and reply.reply_to_message.message_id == sent.message_id
    draft = tg.fake.sent("sendMessageDraft")[-1]
    assert draft.params == {"chat_id": str(chat), "draft_id": "42", "text": "thinking…"}
    reaction = tg.fake.sent("setMessageReaction")[-1]
    assert tgs.json_param(reaction.params["reaction"]) == [{"type": "emoji", "emoji": "👍"}]


async def test_files_upload_and_download_with_the_library(alice_bot: telegram.Bot, tmp_path: Path):
    chat = ALICE["id"]
    content = b"%PDF-1.4 " + bytes(range(256)) * 200
    sent = await alice_bot.send_document(chat, document=content, filename="report.pdf", caption="the report")
    assert sent.document is not None and sent.caption == "the report"
    handle = await alice_bot.get_file(sent.document.file_id)
    assert handle.file_path is not None and handle.file_path.startswith(alice_bot.base_file_url)
    assert bytes(await handle.download_as_bytearray()) == content
    target = await handle.download_to_drive(tmp_path / "copy.pdf")
    assert target.read_bytes() == content
    album = await alice_bot.send_media_group(
        chat,
        [InputMediaPhoto(b"\x89PNG one", caption="first"), InputMediaPhoto(b"\x89PNG two")],
    )
    assert len(album) == 2 and album[0].media_group_id == album[1].media_group_id
    second = await alice_bot.get_file(album[1].photo[-1].file_id)
    assert bytes(await second.download_as_bytearray()) == b"\x89PNG two"
    swapped = await alice_bot.edit_message_media(
        InputMediaDocument(b"new content", filename="v2.txt"), chat_id=chat, message_id=sent.message_id
    )
    assert isinstance(swapped, telegram.Message) and swapped.document is not None
    again = await alice_bot.get_file(swapped.document.file_id)
    assert bytes(await again.download_as_bytearray()) == b"new content"


async def test_another_users_chat_and_file_raise_and_reach_telegram_never(
    alice_bot: telegram.Bot, tg: TgGateway, dedicated: DedicatedServer
):
    await tg.create_user(dedicated, "ub")
    await tg.link_private(dedicated, "ub", BOB)
    bob_file = tg.fake.add_file(b"bob's private scan")
    update = tgs.message(tgs.private_chat(BOB), BOB, document={**bob_file, "file_name": "scan.pdf"})
    assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: any(e["type"] == "telegram.update" for e in dedicated.events("ub")))
    calls = len(tg.fake.calls)
    attempts: list[Any] = [
        alice_bot.send_message(BOB["id"], "hi"),
        alice_bot.get_file(bob_file["file_id"]),
        alice_bot.send_document(ALICE["id"], document=bob_file["file_id"]),
        alice_bot.forward_message(ALICE["id"], from_chat_id=BOB["id"], message_id=1),
    ]
    for attempt in attempts:
        with pytest.raises(telegram.error.TelegramError):
            await attempt
    assert len(tg.fake.calls) == calls
