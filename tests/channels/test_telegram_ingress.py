from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

import pytest
import telegram
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from channels.telegram.identity import derive_secret
from channels.telegram.ingress import HINT_BAD_CODE, HINT_GROUP, HINT_UNLINKED
from foundation.types import Event
from gateway.app import create_app
from routing.handoff import Item
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import REDIS_URL, wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, TgGateway, of_type, tg_settings, updates

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")


async def redis_dump(prefix: str) -> bytes:
    """Every key and value under the prefix, as one blob to search."""
    redis = Redis.from_url(REDIS_URL)
    out = []
    try:
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            kind = (await redis.type(key)).decode()
            out.append(key)
            if kind == "string":
                out.append(await redis.get(key) or b"")
            elif kind == "hash":
                for k, v in (await redis.hgetall(key)).items():
                    out += [k, v]
            elif kind == "zset":
                out += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
            elif kind == "set":
                out += list(await redis.smembers(key))
            elif kind == "stream":
                for _id, fields in await redis.xrange(key):
                    out += [v for kv in fields.items() for v in kv]
            elif kind == "list":
                out += await redis.lrange(key, 0, -1)
    finally:
        await redis.aclose()
    return b"\n".join(out)


async def test_start_registers_the_webhook_with_secret_and_update_kinds(tg: TgGateway):
    await tg.fake.wait_for(lambda: bool(tg.fake.webhook))
    hook = tg.fake.webhook
    assert hook["url"] == f"{tg.settings.public_url}/telegram/webhook/{tgs.BOT_ID}"
    assert hook["secret_token"] == tg.settings.telegram_webhook_secret
    allowed = __import__("orjson").loads(hook["allowed_updates"])
    assert {"message", "edited_message", "callback_query", "my_chat_member"} <= set(allowed)
    assert 1 <= int(hook["max_connections"]) <= 100


async def test_derived_secret_fits_telegram_and_is_what_the_webhook_accepts(tmp_path: Path, fake_tg: FakeTelegram):
    settings = tg_settings(tmp_path, fake_tg, telegram_webhook_secret=None)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        await fake_tg.wait_for(lambda: bool(fake_tg.webhook))
        secret = fake_tg.webhook["secret_token"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret)
        assert secret == derive_secret(settings.master_keys[0].key, str(tgs.BOT_ID))
        update = tgs.text(tgs.private_chat(ALICE), ALICE, "hi")
        path = f"/telegram/webhook/{tgs.BOT_ID}"
        ok = await client.post(path, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
        assert ok.status == 200
        bad = await client.post(path, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret[:-1] + "x"})
        assert bad.status == 401
    finally:
        await client.close()


async def test_wrong_or_missing_secret_is_401_and_nothing_is_queued(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    queued = await tg.services.redis.hget(tg.services.keys.counters("u1"), "events_in")
    for secret in (None, "", "wrong-secret", SECRET + "x"):
        resp = await tg.post_update(tgs.text(tgs.private_chat(ALICE), ALICE, "sneaky"), secret=secret)
        assert resp.status == 401
        assert (await resp.json())["error"] == "bad_secret"
    other_bot = await tg.client.post("/telegram/webhook/999", json={"update_id": 1})
    assert other_bot.status == 404
    assert await tg.services.redis.hget(tg.services.keys.counters("u1"), "events_in") == queued


async def test_malformed_bodies_are_400_json(tg: TgGateway):
    path = f"/telegram/webhook/{tgs.BOT_ID}"
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    bodies = [
        b"{not json",
        b"[1,2]",
        b'{"message": {}}',
        b'{"update_id": "7"}',
        b'{"update_id": true}',
        b'{"update_id": 5, "message": "text"}',
        b'{"update_id": 5, "message": {"chat": 1}}',
        b"",
    ]
    for body in bodies:
        resp = await tg.client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 400, body
        assert (await resp.json())["error"] in ("invalid_json", "invalid_update"), body


async def test_linking_by_deep_link_sends_linked_not_the_start_message(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    resp = await tg.admin("POST", "/admin/v1/users/u1/telegram/link")
    body = await resp.json()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body["code"])
    assert body["url"] == f"https://t.me/{tgs.USERNAME}?start={body['code']}"
    expires = dt.datetime.fromisoformat(body["expires_at"]).timestamp()
    assert 14 * 60 < expires - time.time() <= 15 * 60 + 2
    start = tgs.start(tgs.private_chat(ALICE), ALICE, body["code"])
    assert (await tg.post_update(start)).status == 200
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u1", "telegram.linked")) == 1)
    linked = of_type(dedicated, "u1", "telegram.linked")[0]
    assert linked["chat"]["id"] == ALICE["id"] and linked["chat"]["type"] == "private" and linked["via"] == "start"
    assert updates(dedicated, "u1") == []
    hello = tgs.text(tgs.private_chat(ALICE), ALICE, "hello there")
    assert (await tg.post_update(hello)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == 1)
    assert updates(dedicated, "u1") == [hello]
    status = await (await tg.admin("GET", "/admin/v1/users/u1")).json()
    assert status["telegram"]["private_chat_id"] == ALICE["id"]
    assert [c["chat_id"] for c in status["telegram"]["chats"]] == [ALICE["id"]]


async def test_used_or_expired_codes_get_a_friendly_reply_and_link_nothing(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.create_user(dedicated, "u2")
    code = (await (await tg.admin("POST", "/admin/v1/users/u1/telegram/link")).json())["code"]
    assert (await tg.post_update(tgs.start(tgs.private_chat(ALICE), ALICE, code))).status == 200
    # The same code from another account: already used.
    assert (await tg.post_update(tgs.start(tgs.private_chat(BOB), BOB, code))).status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent(chat_id=BOB["id"])) == 1)
    assert tg.fake.sent(chat_id=BOB["id"])[0].params["text"] == HINT_BAD_CODE
    assert await tg.channel.chats.owner(BOB["id"]) is None
    # An expired code.
    carol = tgs.person(333000333, "Carol", None)
    stale = (await (await tg.admin("POST", "/admin/v1/users/u2/telegram/link")).json())["code"]
    async for key in tg.services.redis.scan_iter(match=tg.settings.key_prefix + "tg:code:*"):
        await tg.services.redis.pexpire(key, 1)
    await asyncio.sleep(0.01)
    assert (await tg.post_update(tgs.start(tgs.private_chat(carol), carol, stale))).status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent(chat_id=carol["id"])) == 1)
    assert await tg.channel.chats.owner(carol["id"]) is None
    assert of_type(dedicated, "u2", "telegram.linked") == []


async def test_every_update_kind_arrives_exactly_as_sent(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    chat = tgs.private_chat(ALICE)
    photo = [
        {"file_id": "AgACAgIAAxkBAAIBb2Z", "file_unique_id": "AQADq7", "file_size": 1432, "width": 90, "height": 67},
        {"file_id": "AgACAgIAAxkBAAIBb2Y", "file_unique_id": "AQADq8", "file_size": 20311, "width": 320, "height": 240},
    ]
    sent = [
        tgs.text(chat, ALICE, "plain text ✓ with emoji 🎉"),
        tgs.message(chat, ALICE, photo=photo, caption="a caption"),
        tgs.message(
            chat,
            ALICE,
            voice={
                "duration": 3,
                "mime_type": "audio/ogg",
                "file_id": "AwACAgIAAxkBAAIBc",
                "file_unique_id": "AgADvo",
                "file_size": 9141,
            },
        ),
        tgs.message(
            chat,
            ALICE,
            document={
                "file_name": "report.pdf",
                "mime_type": "application/pdf",
                "file_id": "BQACAgIAAxkBAAIBd",
                "file_unique_id": "AgADdo",
                "file_size": 48213,
            },
        ),
        {
            "update_id": tgs.next_update_id(),
            "edited_message": {
                "message_id": 7,
                "from": ALICE,
                "chat": chat,
                "date": int(time.time()) - 60,
                "edit_date": int(time.time()),
                "text": "edited text",
            },
        },
        {
            "update_id": tgs.next_update_id(),
            "callback_query": {
                "id": "4382bfdwdsb323b2d9",
                "from": ALICE,
                "chat_instance": "-2938479238472",
                "data": "yes",
                "message": {
                    "message_id": 8,
                    "from": tgs.BOT_USER,
                    "chat": chat,
                    "date": int(time.time()),
                    "text": "Proceed?",
                },
            },
        },
        {
            "update_id": tgs.next_update_id(),
            "message_reaction": {
                "chat": chat,
                "message_id": 8,
                "user": ALICE,
                "date": int(time.time()),
                "old_reaction": [],
                "new_reaction": [{"type": "emoji", "emoji": "👍"}],
            },
        },
    ]
    for update in sent:
        assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == len(sent))
    assert updates(dedicated, "u1") == sent


async def test_the_webhook_routes_every_kind_without_building_the_librarys_update(
    tg: TgGateway, dedicated: DedicatedServer, monkeypatch: pytest.MonkeyPatch
):
    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("telegram.Update built on the webhook path")

    monkeypatch.setattr(telegram.Update, "de_json", built)
    monkeypatch.setattr(telegram.Update, "__init__", built)
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    group = tgs.group_chat(-4007654321)
    added = tgs.chat_member(group, ALICE, "left", "member")
    press = {
        "update_id": tgs.next_update_id(),
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": ALICE,
            "chat_instance": "-2938479238472",
            "data": "yes",
            "message": {"message_id": 8, "from": tgs.BOT_USER, "chat": group, "date": int(time.time()), "text": "Go?"},
        },
    }
    sent = [tgs.text(tgs.private_chat(ALICE), ALICE, "hello"), added, tgs.text(group, BOB, "hi all"), press]
    for update in sent:
        assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == len(sent))
    assert updates(dedicated, "u1") == sent
    linked = of_type(dedicated, "u1", "telegram.linked")
    assert [(e["chat"], e["from"], e["via"]) for e in linked] == [
        (tgs.private_chat(ALICE), ALICE, "start"),
        (group, ALICE, "group"),
    ]
    refused = await tg.post_update({"update_id": 5, "message": {"message_id": 1, "date": 1, "chat": {"id": True}}})
    assert refused.status == 400 and (await refused.json())["error"] == "invalid_update"


async def test_repeated_update_id_is_acknowledged_and_queued_once(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    update = tgs.text(tgs.private_chat(ALICE), ALICE, "once")
    for _ in range(3):
        assert (await tg.post_update(update)).status == 200
    after = tgs.text(tgs.private_chat(ALICE), ALICE, "after")
    assert (await tg.post_update(after)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == 2)
    await asyncio.sleep(0.2)
    assert updates(dedicated, "u1") == [update, after]


async def test_an_update_id_is_kept_a_day_not_a_week_while_other_channels_keep_a_week(
    tg: TgGateway, dedicated: DedicatedServer
):
    """Telegram sends an update again at most 24 hours after its first attempt: its ids are kept
    25 hours (an id older than that is trimmed and the update counts as new), Gmail's a week."""
    r, keys = tg.services.redis, tg.services.keys
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    seen = keys.seen("u1", f"tg:{tgs.BOT_ID}")
    old, recent = (tgs.text(tgs.private_chat(ALICE), ALICE, t) for t in ("old", "recent"))
    for update in (old, recent):
        assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == 2)
    hour = 3600 * 1000
    assert 24 * hour < await r.pttl(seen) <= 25 * hour
    now = int(time.time() * 1000)
    await r.zadd(seen, {str(old["update_id"]): now - 25 * hour - 60_000, str(recent["update_id"]): now - 24 * hour})
    # Telegram's last retries (each hand-over trims what its window left behind, then the next
    # finds the old id gone).
    for update in (recent, old):
        assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: len(updates(dedicated, "u1")) == 3)
    await asyncio.sleep(0.2)
    assert updates(dedicated, "u1") == [old, recent, old]
    await tg.services.handoff("u1", [Item(Event("gmail.message", "gmail", {"n": 1}), dedup="m1")], dedup_scope="gmail")
    assert 6 * 24 * hour < await r.pttl(keys.seen("u1", "gmail")) <= 7 * 24 * hour


async def test_unlinked_chat_gets_one_hint_an_hour_and_nothing_is_stored(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    stranger = tgs.person(444000444, "Mallory", "mallory")
    marker = "MARKER-unlinked-7f3a9c"
    for n in range(3):
        resp = await tg.post_update(tgs.text(tgs.private_chat(stranger), stranger, f"{marker} {n}"))
        assert resp.status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent(chat_id=stranger["id"])) >= 1)
    await asyncio.sleep(0.3)
    replies = tg.fake.sent(chat_id=stranger["id"])
    assert [c.params["text"] for c in replies] == [HINT_UNLINKED]
    dump = await redis_dump(tg.settings.key_prefix)
    assert marker.encode() not in dump
    assert b"Mallory" not in dump and b"mallory" not in dump
    assert str(stranger["id"]).encode() not in dump
    assert dedicated.events("u1") == []


async def test_group_added_by_linked_user_routes_to_that_user(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    group = tgs.group_chat(-4001234567)
    added = tgs.chat_member(group, ALICE, "left", "member")
    assert (await tg.post_update(added)).status == 200
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u1", "telegram.linked")) == 2)
    linked = of_type(dedicated, "u1", "telegram.linked")[1]
    assert linked["chat"]["id"] == group["id"] and linked["via"] == "group"
    said = tgs.text(group, BOB, "hi all")
    assert (await tg.post_update(said)).status == 200
    await dedicated.wait_for(lambda: said in updates(dedicated, "u1"))
    assert updates(dedicated, "u1") == [added, said]
    # A group added by someone who is not linked is not routed anywhere and gets one hint.
    other = tgs.group_chat(-4009999999, "Strangers")
    assert (await tg.post_update(tgs.chat_member(other, BOB, "left", "member"))).status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent(chat_id=other["id"])) == 1)
    assert tg.fake.sent(chat_id=other["id"])[0].params["text"] == HINT_GROUP
    assert await tg.channel.chats.owner(other["id"]) is None


async def test_blocking_the_bot_unlinks_and_says_so(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    blocked = tgs.chat_member(tgs.private_chat(ALICE), ALICE, "member", "kicked")
    assert (await tg.post_update(blocked)).status == 200
    await dedicated.wait_for(lambda: len(of_type(dedicated, "u1", "telegram.unlinked")) == 1)
    unlinked = of_type(dedicated, "u1", "telegram.unlinked")[0]
    assert unlinked["chat"]["id"] == ALICE["id"] and unlinked["reason"] == "kicked"
    assert await tg.channel.chats.owner(ALICE["id"]) is None
    status = await (await tg.admin("GET", "/admin/v1/users/u1")).json()
    assert status["telegram"]["chats"] == [] and status["telegram"]["private_chat_id"] is None
    later = tgs.text(tgs.private_chat(ALICE), ALICE, "still there?")
    assert (await tg.post_update(later)).status == 200
    await asyncio.sleep(0.3)
    assert later not in updates(dedicated, "u1")


async def test_queueing_failure_is_503_so_telegram_retries(tmp_path: Path, fake_tg: FakeTelegram):
    settings = tg_settings(tmp_path, fake_tg, redis_url="redis://127.0.0.1:1/0")
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        resp = await client.post(
            f"/telegram/webhook/{tgs.BOT_ID}",
            json=tgs.text(tgs.private_chat(ALICE), ALICE, "hi"),
            headers={"X-Telegram-Bot-Api-Secret-Token": settings.telegram_webhook_secret or ""},
        )
        assert resp.status == 503
        assert (await resp.json())["error"] == "storage_unavailable"
        assert resp.headers["Retry-After"] == "1"
    finally:
        await client.close()


async def test_erasure_releases_the_chat_mappings(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    export = await (await tg.admin("GET", "/admin/v1/users/u1/export")).json()
    assert export["telegram"]["chats"][0]["chat_id"] == ALICE["id"]
    assert (await tg.admin("DELETE", "/admin/v1/users/u1")).status == 202
    await tg.services.eraser.wait("u1")
    assert await tg.channel.chats.owner(ALICE["id"]) is None
    dump = await redis_dump(tg.settings.key_prefix)
    assert b"u1" not in dump.replace(b"erasing", b"")


async def test_updates_with_wrongly_typed_fields_are_400_and_nothing_is_queued(
    tg: TgGateway, dedicated: DedicatedServer
):
    # Alice is linked, so an update of hers that got through would be queued for u1.
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    counters = tg.services.keys.counters("u1")
    queued = await tg.services.redis.hget(counters, "events_in")
    chat = tgs.private_chat(ALICE)
    now = int(time.time())
    bodies: list[Any] = [
        {"update_id": 1, "message": {"message_id": 1, "date": now, "chat": {"id": "abc", "type": "private"}}},
        {"update_id": 2, "message": {"message_id": 1, "date": now, "chat": {"id": [1], "type": "private"}}},
        {"update_id": 3, "message": {"message_id": 1, "date": now, "chat": chat, "text": 5}},
        {"update_id": 4, "message": {"message_id": 1, "date": now, "chat": {"id": 1, "type": None}}},
        {"update_id": 5, "message": {"message_id": 1, "date": now, "chat": chat, "from": {"id": "x"}}},
        {"update_id": 6, "message": {"message_id": 1, "date": now, "chat": chat, "migrate_to_chat_id": "1"}},
        {"update_id": 7, "message": {"message_id": 1, "date": now, "chat": chat, "new_chat_members": [1]}},
        {"update_id": 8, "my_chat_member": {"chat": chat, "from": ALICE, "date": now}},
        {"update_id": 9, "callback_query": {"id": 7, "from": ALICE, "chat_instance": "1"}},
        {"update_id": 10, "message": None, "edited_message": {"chat": chat}},
        {"update_id": 11, "message": {"message_id": 1, "date": "yesterday", "chat": chat, "text": "/start x"}},
        {"update_id": -1},
    ]
    for body in bodies:
        resp = await tg.post_update(body)
        assert resp.status == 400, (body, resp.status)
        assert (await resp.json())["error"] == "invalid_update"
    assert await tg.services.redis.hget(counters, "events_in") == queued
    assert updates(dedicated, "u1") == []
    # An update with no chat at all (a poll) is acknowledged and dropped.
    poll = {
        "update_id": 12,
        "poll": {
            "id": "1",
            "question": "q",
            "options": [],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
            "allows_revoting": False,
            "members_only": False,
        },
    }
    assert (await tg.post_update(poll)).status == 200


async def test_a_webhook_url_telegram_refuses_is_not_retried_forever(tmp_path: Path, fake_tg: FakeTelegram):
    fake_tg.fail("setWebhook", 400, "Bad Request: bad webhook: HTTPS url must be provided for webhook")
    settings = tg_settings(tmp_path, fake_tg)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        await fake_tg.wait_for(lambda: bool(fake_tg.sent("setWebhook")))
        await asyncio.sleep(1.5)
        assert len(fake_tg.sent("setWebhook")) == 1
        headers = {"Authorization": f"Bearer {settings.admin_token}"}
        public_key = DedicatedServer().new_user("u1")
        put = await client.put(
            "/admin/v1/users/u1",
            headers=headers,
            json={"server_url": "http://127.0.0.1:9/u1", "server_public_key": public_key},
        )
        assert put.status == 201
        link = await client.post("/admin/v1/users/u1/telegram/link", headers=headers)
        assert link.status == 200  # getMe worked, so links can still be made
    finally:
        await client.close()
        await wipe(settings.key_prefix)


async def test_a_group_upgraded_to_a_supergroup_stays_linked(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    group = tgs.group_chat(-4007000000)
    assert (await tg.post_update(tgs.chat_member(group, ALICE, "left", "member"))).status == 200
    migrated = tgs.message(group, ALICE, migrate_to_chat_id=-1001234567890)
    assert (await tg.post_update(migrated)).status == 200
    supergroup = {"id": -1001234567890, "title": "Family", "type": "supergroup"}
    said = tgs.text(supergroup, BOB, "in the supergroup now")
    assert (await tg.post_update(said)).status == 200
    await dedicated.wait_for(lambda: said in updates(dedicated, "u1"))
    linked = of_type(dedicated, "u1", "telegram.linked")
    assert linked[-1]["chat"]["id"] == supergroup["id"] and linked[-1]["via"] == "migrated"
    assert of_type(dedicated, "u1", "telegram.unlinked")[-1]["reason"] == "migrated"
    assert await tg.channel.chats.owner(group["id"]) is None


async def test_bot_added_to_a_group_by_someone_unlinked_gets_one_explanation(tg: TgGateway):
    group = tgs.group_chat(-4008000000)
    joined = tgs.message(group, BOB, new_chat_members=[tgs.BOT_USER])
    assert (await tg.post_update(joined)).status == 200
    assert (await tg.post_update(tgs.chat_member(group, BOB, "left", "member"))).status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent(chat_id=group["id"])) >= 1)
    await asyncio.sleep(0.3)
    assert [c.params["text"] for c in tg.fake.sent(chat_id=group["id"])] == [HINT_GROUP]


async def test_supergroup_upgrade_seen_from_the_new_chat_first_links_it_once(tg: TgGateway, dedicated: DedicatedServer):
    await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    group = tgs.group_chat(-4007100000)
    assert (await tg.post_update(tgs.chat_member(group, ALICE, "left", "member"))).status == 200
    supergroup: dict[str, Any] = {"id": -1001234500000, "title": "Family", "type": "supergroup"}
    from_side = tgs.message(supergroup, ALICE, migrate_from_chat_id=group["id"])
    to_side = tgs.message(group, ALICE, migrate_to_chat_id=supergroup["id"])
    assert (await tg.post_update(from_side)).status == 200
    assert (await tg.post_update(to_side)).status == 200
    await dedicated.wait_for(lambda: to_side in updates(dedicated, "u1"))
    linked = [e["chat"]["id"] for e in of_type(dedicated, "u1", "telegram.linked")]
    assert linked.count(supergroup["id"]) == 1
    assert await tg.channel.chats.owner(supergroup["id"]) == "u1"
    assert await tg.channel.chats.owner(group["id"]) is None
