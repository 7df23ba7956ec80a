"""A chat linked to one user does not move to another without its Telegram user's say (contract §9.4).

The attack: user A sends user B a deep link carrying A's code. One tap must not hand B's chat
(and everything B writes from then on) to A's server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from channels.telegram.chats import Chats
from channels.telegram.ingress import ASK_MOVE, HINT_UNLINKED, MOVE_EXPIRED, MOVE_NOT_YOURS, MOVED
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram_gateway import TgGateway, of_type, updates

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")
CAROL = tgs.person(333000333, "Carol", "carol")


def press(sender: dict[str, Any], chat: dict[str, Any], data: str) -> dict[str, Any]:
    """A press of an inline button under the bot's message in `chat`, as Telegram sends it."""
    message = {"message_id": 9001, "from": tgs.BOT_USER, "chat": chat, "date": 1, "text": "..."}
    query = {"id": f"cbq{tgs.next_update_id()}", "from": sender, "chat_instance": "-1", "message": message}
    return {"update_id": tgs.next_update_id(), "callback_query": {**query, "data": data}}


async def question(tg: TgGateway, chat_id: int) -> str:
    """The move button's callback_data from the gateway's question in that chat."""
    await tg.fake.wait_for(lambda: any(c.params.get("reply_markup") for c in tg.fake.sent(chat_id=chat_id)))
    asked = [c for c in tg.fake.sent(chat_id=chat_id) if c.params.get("reply_markup")][-1]
    button = orjson.loads(asked.params["reply_markup"])["inline_keyboard"][0][0]
    data: str = button["callback_data"]
    assert len(data.encode()) <= 64  # Telegram's limit for callback_data
    return data


async def answers(tg: TgGateway, count: int) -> list[str]:
    await tg.fake.wait_for(lambda: len(tg.fake.sent("answerCallbackQuery")) >= count)
    return [c.params["text"] for c in tg.fake.sent("answerCallbackQuery")]


async def test_another_users_link_does_not_move_a_chat_until_its_owner_confirms(
    tg: TgGateway, dedicated: DedicatedServer
):
    await tg.create_user(dedicated, "victim")
    await tg.create_user(dedicated, "attacker")
    await tg.link_private(dedicated, "victim", BOB)
    code = (await (await tg.admin("POST", "/admin/v1/users/attacker/telegram/link")).json())["code"]
    # Bob opens the link the attacker sent him.
    assert (await tg.post_update(tgs.start(tgs.private_chat(BOB), BOB, code))).status == 200
    data = await question(tg, BOB["id"])
    assert tg.fake.sent(chat_id=BOB["id"])[-1].params["text"] == ASK_MOVE["start"]
    assert await tg.channel.chats.owner(BOB["id"]) == "victim"
    said = tgs.text(tgs.private_chat(BOB), BOB, "my bank code is 1234")
    assert (await tg.post_update(said)).status == 200
    await dedicated.wait_for(lambda: said in updates(dedicated, "victim"))
    assert of_type(dedicated, "attacker", "telegram.linked") == [] and updates(dedicated, "attacker") == []
    # What the button would do is not readable in Redis: no user id, no chat id.
    stored = [k async for k in tg.services.redis.scan_iter(match=tg.settings.key_prefix + "tg:move:*")]
    assert len(stored) == 1
    record = await tg.services.redis.get(stored[0])
    assert b"attacker" not in record and str(BOB["id"]).encode() not in record
    assert 14 * 60 < await tg.services.redis.ttl(stored[0]) <= 15 * 60
    # Bob confirms: now (and only now) the chat moves; the button is not forwarded to anyone.
    assert (await tg.post_update(press(BOB, tgs.private_chat(BOB), data))).status == 200
    assert await answers(tg, 1) == [MOVED]
    await dedicated.wait_for(lambda: len(of_type(dedicated, "attacker", "telegram.linked")) == 1)
    await dedicated.wait_for(lambda: len(of_type(dedicated, "victim", "telegram.unlinked")) == 1)
    assert of_type(dedicated, "victim", "telegram.unlinked")[0]["reason"] == "relinked"
    assert await tg.channel.chats.owner(BOB["id"]) == "attacker"
    assert not any("callback_query" in u for u in updates(dedicated, "victim") + updates(dedicated, "attacker"))
    # The button works once.
    assert (await tg.post_update(press(BOB, tgs.private_chat(BOB), data))).status == 200
    assert (await answers(tg, 2))[1] == MOVE_EXPIRED
    assert len(of_type(dedicated, "attacker", "telegram.linked")) == 1


async def test_a_forged_or_expired_button_moves_nothing(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.create_user(dedicated, "u2")
    await tg.link_private(dedicated, "u1", BOB)
    code = (await (await tg.admin("POST", "/admin/v1/users/u2/telegram/link")).json())["code"]
    assert (await tg.post_update(tgs.start(tgs.private_chat(BOB), BOB, code))).status == 200
    data = await question(tg, BOB["id"])
    forged = data[:-4] + ("AAAA" if not data.endswith("AAAA") else "BBBB")
    assert (await tg.post_update(press(BOB, tgs.private_chat(BOB), forged))).status == 200
    async for key in tg.services.redis.scan_iter(match=tg.settings.key_prefix + "tg:move:*"):
        await tg.services.redis.pexpire(key, 1)
    await asyncio.sleep(0.01)
    assert (await tg.post_update(press(BOB, tgs.private_chat(BOB), data))).status == 200
    assert await answers(tg, 2) == [MOVE_EXPIRED, MOVE_EXPIRED]
    assert await tg.channel.chats.owner(BOB["id"]) == "u1"
    assert of_type(dedicated, "u2", "telegram.linked") == []


async def test_a_group_moves_only_when_the_person_who_added_the_bot_confirms(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.create_user(dedicated, "u2")
    await tg.link_private(dedicated, "u1", ALICE)
    await tg.link_private(dedicated, "u2", BOB)
    group = tgs.group_chat(-4006660000)
    assert (await tg.post_update(tgs.chat_member(group, ALICE, "left", "member"))).status == 200
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u1", "telegram.linked")) == 2)
    # Bob adds the bot to the group that is Alice's (Telegram did not tell of its removal).
    added = tgs.chat_member(group, BOB, "left", "member")
    assert (await tg.post_update(added)).status == 200
    data = await question(tg, group["id"])
    assert tg.fake.sent(chat_id=group["id"])[-1].params["text"] == ASK_MOVE["group"]
    assert await tg.channel.chats.owner(group["id"]) == "u1"
    # Carol, another member of the group, presses the button: nothing moves.
    assert (await tg.post_update(press(CAROL, group, data))).status == 200
    assert await answers(tg, 1) == [MOVE_NOT_YOURS]
    assert await tg.channel.chats.owner(group["id"]) == "u1"
    said = tgs.text(group, CAROL, "still Alice's group")
    assert (await tg.post_update(said)).status == 200
    await dedicated.wait_for(lambda: said in updates(dedicated, "u1"))
    assert of_type(dedicated, "u2", "telegram.linked") == [of_type(dedicated, "u2", "telegram.linked")[0]]
    # Bob presses: the group is his user's now.
    assert (await tg.post_update(press(BOB, group, data))).status == 200
    assert (await answers(tg, 2))[1] == MOVED
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u2", "telegram.linked")) == 2)
    moved = of_type(dedicated, "u2", "telegram.linked")[1]
    assert moved["chat"]["id"] == group["id"] and moved["via"] == "group"
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u1", "telegram.unlinked")) == 1)
    assert await tg.channel.chats.owner(group["id"]) == "u2"


async def test_a_chat_moved_by_another_process_never_reaches_its_former_owner(
    tg: TgGateway, dedicated: DedicatedServer
):
    """Each process remembers which user a chat routed to, to queue its messages in one round
    trip. Another process (here: a second `Chats` on the same Redis) moves the chat; this
    process's memory is then stale, and the hand-over itself must refuse the old owner."""
    await tg.create_user(dedicated, "before")
    await tg.create_user(dedicated, "after")
    await tg.link_private(dedicated, "before", BOB)
    first = tgs.text(tgs.private_chat(BOB), BOB, "to the first owner")
    assert (await tg.post_update(first)).status == 200
    await dedicated.wait_for(lambda: first in updates(dedicated, "before"))
    assert tg.channel.chats.cached_owner(BOB["id"]) == "before"
    elsewhere = Chats(tg.services.redis, tg.services.keys)
    assert await elsewhere.link("after", BOB["id"], "private", "start") == "before"
    assert tg.channel.chats.cached_owner(BOB["id"]) == "before"  # this process has not heard of it
    second = tgs.text(tgs.private_chat(BOB), BOB, "to the new owner only")
    assert (await tg.post_update(second)).status == 200
    await dedicated.wait_for(lambda: second in updates(dedicated, "after"))
    assert second not in updates(dedicated, "before")
    assert tg.channel.chats.cached_owner(BOB["id"]) == "after"
    # Unlinked elsewhere altogether: nobody gets the next message.
    assert await elsewhere.unlink("after", BOB["id"])
    third = tgs.text(tgs.private_chat(BOB), BOB, "to nobody")
    assert (await tg.post_update(third)).status == 200
    # Handled as a chat nobody linked: it gets the gateway's hint, and nothing is queued.
    await tg.fake.wait_for(lambda: any(c.params.get("text") == HINT_UNLINKED for c in tg.fake.sent(chat_id=BOB["id"])))
    assert third not in updates(dedicated, "after") + updates(dedicated, "before")
    assert tg.channel.chats.cached_owner(BOB["id"]) is None
