from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.split import utf16_len
from gateway.app import create_app
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import TgGateway, linked, tg_settings

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")


async def test_send_message_defaults_to_the_private_chat_and_answers_telegrams_json(
    tg: TgGateway, dedicated: DedicatedServer
):
    auth = await linked(tg, dedicated, "u1", ALICE)
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "hello"}, headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["ok"] is True and body["result"]["chat"]["id"] == ALICE["id"] and body["result"]["text"] == "hello"
    call = tg.fake.sent()[-1]
    assert call.params["chat_id"] == str(ALICE["id"]) and call.encoding == "form"
    # Form-encoded in, structured parameters passed as JSON text (as Telegram takes them).
    markup = {"inline_keyboard": [[{"text": "Yes", "callback_data": "yes"}]]}
    resp = await tg.client.post(
        "/v1/telegram/sendMessage",
        data={"chat_id": str(ALICE["id"]), "text": "pick", "reply_markup": orjson.dumps(markup).decode()},
        headers=auth,
    )
    assert resp.status == 200
    assert (await resp.json())["result"]["reply_markup"] == markup
    raw = await resp.read()
    assert tgs.TOKEN.encode() not in raw and tgs.TOKEN.split(":")[1].encode() not in raw


async def test_other_users_chats_methods_and_ids_are_refused_and_nothing_is_sent(
    tg: TgGateway, dedicated: DedicatedServer
):
    auth_a = await linked(tg, dedicated, "ua", ALICE)
    await linked(tg, dedicated, "ub", BOB)
    file_b = tg.fake.add_file(b"bob's secret file")
    group_b = tgs.group_chat(-4005550000)
    photo = tgs.message(tgs.private_chat(BOB), BOB, document={**file_b, "file_name": "b.pdf"})
    assert (await tg.post_update(photo)).status == 200
    assert (await tg.post_update(tgs.chat_member(group_b, BOB, "left", "member"))).status == 200
    cbq = {
        "update_id": tgs.next_update_id(),
        "callback_query": {"id": "98127398127", "from": BOB, "chat_instance": "-1", "data": "x"},
    }
    assert (await tg.post_update(cbq)).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("ub")) >= 4)
    calls_before = len(tg.fake.calls)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("sendMessage", {"chat_id": BOB["id"], "text": "hi"}, 403, "chat_not_allowed"),
        ("sendMessage", {"chat_id": str(group_b["id"]), "text": "hi"}, 403, "chat_not_allowed"),
        ("sendMessage", {"chat_id": "@bobs_channel", "text": "hi"}, 403, "chat_not_allowed"),
        (
            "sendMessage",
            {"text": "hi", "reply_parameters": {"message_id": 1, "chat_id": BOB["id"]}},
            403,
            "chat_not_allowed",
        ),
        ("deleteMessage", {"chat_id": BOB["id"], "message_id": 3}, 403, "chat_not_allowed"),
        ("editMessageText", {"inline_message_id": "AAA", "text": "x"}, 403, "inline_message_unsupported"),
        ("sendDocument", {"document": file_b["file_id"]}, 404, "unknown_file"),
        ("getFile", {"file_id": file_b["file_id"]}, 404, "unknown_file"),
        ("answerCallbackQuery", {"callback_query_id": "98127398127"}, 404, "unknown_callback_query"),
        ("getUpdates", {}, 404, "unknown_method"),
        ("setWebhook", {"url": "https://evil.example"}, 404, "unknown_method"),
        ("sendMessage", {"chat_id": ALICE["id"], "text": "no token"}, 401, "unauthorized"),
    ]
    for method, params, status, code in cases:
        headers = auth_a if code != "unauthorized" else {}
        resp = await tg.client.post(f"/v1/telegram/{method}", json=params, headers=headers)
        assert resp.status == status, (method, params, await resp.text())
        assert (await resp.json())["error"] == code
    file_resp = await tg.client.get(f"/v1/telegram/files/{file_b['file_id']}", headers=auth_a)
    assert file_resp.status == 404
    assert len(tg.fake.calls) == calls_before


async def test_callback_queries_and_files_of_own_chats_are_usable(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "u1", ALICE)
    cbq = {
        "update_id": tgs.next_update_id(),
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": ALICE,
            "chat_instance": "-29",
            "data": "yes",
            "message": {"message_id": 8, "from": tgs.BOT_USER, "chat": tgs.private_chat(ALICE), "date": 1, "text": "?"},
        },
    }
    assert (await tg.post_update(cbq)).status == 200
    resp = await tg.client.post(
        "/v1/telegram/answerCallbackQuery", json={"callback_query_id": "4382bfdwdsb323b2d9", "text": "ok"}, headers=auth
    )
    assert resp.status == 200 and (await resp.json()) == {"ok": True, "result": True}
    for method, params in [
        ("sendChatAction", {"action": "typing"}),
        ("editMessageText", {"message_id": 8, "text": "done"}),
        ("editMessageReplyMarkup", {"message_id": 8, "reply_markup": {"inline_keyboard": []}}),
        ("deleteMessage", {"message_id": 8}),
    ]:
        resp = await tg.client.post(f"/v1/telegram/{method}", json=params, headers=auth)
        assert resp.status == 200, (method, await resp.text())
        assert (await resp.json())["ok"] is True


async def test_uploads_reach_telegram_as_multipart_and_their_files_stream_back(
    tg: TgGateway, dedicated: DedicatedServer
):
    auth = await linked(tg, dedicated, "u1", ALICE)
    content = bytes(range(256)) * 1024
    for method, field in (("sendPhoto", "photo"), ("sendDocument", "document"), ("sendVoice", "voice")):
        form = aiohttp.FormData()
        form.add_field("caption", "look")
        form.add_field(field, content, filename=f"upload-{field}.bin", content_type="application/octet-stream")
        resp = await tg.client.post(f"/v1/telegram/{method}", data=form, headers=auth)
        assert resp.status == 200, await resp.text()
        call = tg.fake.sent(method)[-1]
        assert call.encoding == "multipart" and call.files[field][0] == f"upload-{field}.bin"
        assert call.files[field][2] == content and call.params["chat_id"] == str(ALICE["id"])
        result = (await resp.json())["result"]
        sent = result[field][-1] if field == "photo" else result[field]
        download = await tg.client.get(f"/v1/telegram/files/{sent['file_id']}", headers=auth)
        assert download.status == 200
        assert await download.read() == content
        assert tgs.TOKEN.split(":")[1] not in str(download.headers)
        # A file id the server got back may be sent again as a string.
        again = await tg.client.post(f"/v1/telegram/{method}", json={field: sent["file_id"]}, headers=auth)
        assert again.status == 200
    by_url = await tg.client.post("/v1/telegram/sendPhoto", json={"photo": "https://img.example/cat.jpg"}, headers=auth)
    assert by_url.status == 200


async def test_files_from_incoming_updates_stream_through_the_gateway(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "u1", ALICE)
    content = b"%PDF-1.4 " + b"x" * 300_000
    ref = tg.fake.add_file(content, "documents/file_9.pdf")
    update = tgs.message(tgs.private_chat(ALICE), ALICE, document={**ref, "file_name": "r.pdf"})
    assert (await tg.post_update(update)).status == 200
    resp = await tg.client.get(f"/v1/telegram/files/{ref['file_id']}", headers=auth)
    assert resp.status == 200 and await resp.read() == content
    got = await tg.client.post("/v1/telegram/getFile", json={"file_id": ref["file_id"]}, headers=auth)
    # The path is the gateway's: the file id (checked on download) and Telegram's file name.
    path = (await got.json())["result"]["file_path"]
    assert path == f"{ref['file_id']}/file_9.pdf"
    by_path = await tg.client.get(f"/v1/telegram/files/{path}", headers=auth)
    assert by_path.status == 200 and await by_path.read() == content
    # getFile takes no chat: someone else's chat id sent along is refused, and nothing travels.
    calls = len(tg.fake.calls)
    extra = await tg.client.post(
        "/v1/telegram/getFile", json={"file_id": ref["file_id"], "chat_id": BOB["id"]}, headers=auth
    )
    assert extra.status == 400 and (await extra.json())["error"] == "invalid_parameter"
    assert len(tg.fake.calls) == calls
    # Telegram no longer has it: its own JSON comes back.
    del tg.fake.files[ref["file_id"]]
    gone = await tg.client.get(f"/v1/telegram/files/{ref['file_id']}", headers=auth)
    assert gone.status == 400 and (await gone.json())["description"] == "Bad Request: invalid file_id"


async def test_long_text_is_split_at_paragraphs_lines_and_words(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "u1", ALICE)
    paragraphs = [f"Paragraph {i}. " + ("word " * 300).strip() for i in range(6)]
    text = "\n\n".join(paragraphs)
    assert utf16_len(text) > 2 * 4096
    markup = {"inline_keyboard": [[{"text": "More", "callback_data": "more"}]]}
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": text, "reply_markup": markup}, headers=auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    messages = body["messages"]
    assert len(messages) >= 3 and body["result"] == messages[0]
    texts = [m["text"] for m in messages]
    assert all(utf16_len(t) <= 4096 for t in texts)
    # Cut only between paragraphs: every message is whole paragraphs, in order.
    assert "\n\n".join(texts) == text
    assert [("reply_markup" in m) for m in messages] == [False] * (len(messages) - 1) + [True]
    ids = [m["message_id"] for m in messages]
    assert ids == sorted(ids)


async def test_telegram_errors_pass_through_and_transient_ones_are_retried(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "u1", ALICE)
    tg.fake.fail("sendMessage", 400, "Bad Request: message to reply not found")
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "x", "reply_to_message_id": 9}, headers=auth)
    assert resp.status == 400
    assert await resp.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: message to reply not found",
    }
    tg.fake.fail("sendMessage", 502, "Bad Gateway", times=2)
    before = len(tg.fake.sent())
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "after hiccups"}, headers=auth)
    assert resp.status == 200 and (await resp.json())["result"]["text"] == "after hiccups"
    assert len(tg.fake.sent()) - before == 3
    tg.fake.fail("sendMessage", 500, "Internal Server Error", times=5)
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "down"}, headers=auth)
    assert resp.status == 500 and (await resp.json())["error_code"] == 500


async def test_per_chat_limit_spaces_messages_after_a_short_burst(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "u1", ALICE)
    started = asyncio.get_running_loop().time()
    sends = [tg.client.post("/v1/telegram/sendMessage", json={"text": f"m{i}"}, headers=auth) for i in range(6)]
    answers = await asyncio.gather(*sends)
    assert [r.status for r in answers] == [200] * 6
    times = sorted(c.at for c in tg.fake.sent() if str(c.params.get("text", "")).startswith("m"))
    # Three at once, then one a second: six messages take at least three seconds.
    assert times[-1] - started >= 2.9
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times[2:]))


async def test_a_flooding_user_does_not_hold_up_another_users_message(tg: TgGateway, dedicated: DedicatedServer):
    auth_a = await linked(tg, dedicated, "ua", ALICE)
    auth_b = await linked(tg, dedicated, "ub", BOB)
    groups = [tgs.group_chat(-4100000000 - i, f"g{i}") for i in range(40)]
    for group in groups:
        assert (await tg.post_update(tgs.chat_member(group, ALICE, "left", "member"))).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("ua")) >= 41 + 40)
    loop = asyncio.get_running_loop()
    # 120 messages over 40 groups: each group lets 3 go at once, so only the bot's 30/s holds them.
    flood = [
        asyncio.create_task(
            tg.client.post("/v1/telegram/sendMessage", json={"chat_id": g["id"], "text": f"flood {n}"}, headers=auth_a)
        )
        for n in range(3)
        for g in groups
    ]
    await tg.fake.wait_for(lambda: len(tg.fake.sent()) >= 30)
    asked = loop.time()
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "just one"}, headers=auth_b)
    waited = loop.time() - asked
    assert resp.status == 200
    answers = await asyncio.gather(*flood)
    assert [r.status for r in answers] == [200] * 120
    sent = [c for c in tg.fake.sent() if str(c.params.get("text", "")).startswith("flood")]
    flood_span = max(c.at for c in sent) - min(c.at for c in sent)
    assert flood_span >= 3.0  # the flood really was held to the bot's rate
    assert waited < 2.0


async def test_unreachable_bot_api_is_502_after_retries_and_links_wait_for_it(
    tmp_path: Path, dedicated: DedicatedServer, fake_tg: FakeTelegram
):
    settings = tg_settings(tmp_path, fake_tg, telegram_api_url="http://127.0.0.1:1")
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    gw = TgGateway(client, settings, fake_tg)
    try:
        created = await gw.create_user(dedicated, "u1")
        resp = await gw.admin("POST", "/admin/v1/users/u1/telegram/link")
        assert resp.status == 503 and (await resp.json())["error"] == "telegram_unavailable"
        await gw.channel.chats.link("u1", ALICE["id"], "private", "start")
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await client.post(
            "/v1/telegram/sendMessage", json={"text": "hi"}, headers=gw.server_headers(created["server_token"])
        )
        assert resp.status == 502 and (await resp.json())["error"] == "telegram_unavailable"
        assert loop.time() - started >= 0.4  # it was retried with backoff before giving up
        assert "127.0.0.1:1" not in await resp.text()
    finally:
        await client.close()
        await wipe(settings.key_prefix)
