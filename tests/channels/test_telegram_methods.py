"""The server API's methods table: every allowed method works within the caller's own chats,
uploads go by `attach://`, JSON-text parameters are read once and re-encoded, and the attacks
on that reading (surrounding whitespace, repeated keys) are refused before Telegram sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from channels.telegram.methods import METHODS, table
from channels.telegram.ratelimit import Limits
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram_gateway import TgGateway

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")
ALICE_GROUP = tgs.group_chat(-4001110000, "Alice's family")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "telegram.md"


@pytest.fixture
async def alice(tg: TgGateway, dedicated: DedicatedServer) -> dict[str, str]:
    # Many calls to one chat in a row: the chat limit is not what these tests are about.
    tg.channel.limiter.limits = Limits(chat_interval=0.01, group_interval=0.01, max_wait=10.0)
    created = await tg.create_user(dedicated, "ua")
    await tg.link_private(dedicated, "ua", ALICE)
    assert (await tg.post_update(tgs.chat_member(ALICE_GROUP, ALICE, "left", "member"))).status == 200
    await dedicated.wait_for(lambda: sum(e["type"] == "telegram.linked" for e in dedicated.events("ua")) >= 2)
    return tg.server_headers(created["server_token"])


async def bob_with_a_document(tg: TgGateway, dedicated: DedicatedServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bob's chat holds a document (Telegram remembers the message); returns (file, message)."""
    await tg.create_user(dedicated, "ub")
    await tg.link_private(dedicated, "ub", BOB)
    secret = tg.fake.add_file(b"bob's medical letter", "documents/letter.pdf")
    update = tgs.message(tgs.private_chat(BOB), BOB, document={**secret, "file_name": "letter.pdf"})
    tg.fake.remember(update)
    assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: any(e["type"] == "telegram.update" for e in dedicated.events("ub")))
    return secret, update["message"]


async def post(tg: TgGateway, method: str, auth: dict[str, str], **params: Any) -> aiohttp.ClientResponse:
    return await tg.client.post(f"/v1/telegram/{method}", json=params, headers=auth)


def test_the_documented_table_is_the_table_the_code_enforces():
    assert table() in DOCS.read_text(), "docs/telegram.md must hold channels.telegram.methods.table() verbatim"


async def test_every_allowed_method_reaches_telegram_for_the_callers_own_chats(tg: TgGateway, alice: dict[str, str]):
    own_file = tg.fake.add_file(b"alice's photo", "photos/a.jpg")
    update = tgs.message(tgs.private_chat(ALICE), ALICE, photo=[{**own_file, "width": 9, "height": 9}])
    assert (await tg.post_update(update)).status == 200
    first = await post(tg, "sendMessage", alice, text="first")
    message_id = (await first.json())["result"]["message_id"]
    poll = await post(tg, "sendPoll", alice, question="Lunch?", options=[{"text": "Yes"}, {"text": "No"}])
    poll_id = (await poll.json())["result"]["message_id"]
    photo = {"type": "photo", "media": own_file["file_id"]}
    calls: dict[str, dict[str, Any] | None] = {
        "getMe": {},
        "sendMessage": {"text": "hi", "chat_id": ALICE_GROUP["id"]},
        "sendMessageDraft": {"draft_id": 3, "text": "working…"},
        "sendChatAction": {"action": "typing"},
        "editMessageText": {"message_id": message_id, "text": "edited"},
        "editMessageCaption": {"message_id": message_id, "caption": "new caption"},
        "editMessageMedia": {"message_id": message_id, "media": photo},
        "editMessageReplyMarkup": {"message_id": message_id, "reply_markup": {"inline_keyboard": []}},
        "deleteMessage": {"message_id": message_id + 1000},
        "setMessageReaction": {"message_id": message_id, "reaction": [{"type": "emoji", "emoji": "👍"}]},
        "pinChatMessage": {"message_id": message_id},
        "unpinChatMessage": {"message_id": message_id},
        "sendPhoto": {"photo": own_file["file_id"]},
        "sendDocument": {"document": "https://files.example/report.pdf"},
        "sendVoice": {"voice": own_file["file_id"]},
        "sendAudio": {"audio": own_file["file_id"], "title": "song"},
        "sendVideo": {"video": own_file["file_id"], "supports_streaming": True},
        "sendAnimation": {"animation": own_file["file_id"]},
        "sendVideoNote": {"video_note": own_file["file_id"]},
        "sendSticker": {"sticker": own_file["file_id"]},
        "sendMediaGroup": {"media": [photo, photo]},
        "sendLocation": {"latitude": 52.52, "longitude": 13.40},
        "sendVenue": {"latitude": 52.52, "longitude": 13.40, "title": "Office", "address": "Main St 1"},
        "sendContact": {"phone_number": "+4930123456", "first_name": "Carol"},
        "sendPoll": {"question": "Tea?", "options": ["Yes", "No"]},
        "stopPoll": {"message_id": poll_id},
        "copyMessage": {"from_chat_id": ALICE["id"], "message_id": message_id, "chat_id": ALICE_GROUP["id"]},
        "forwardMessage": {"from_chat_id": ALICE["id"], "message_id": message_id, "chat_id": ALICE_GROUP["id"]},
        "answerCallbackQuery": None,  # needs a query from an update: tested in test_telegram_outbound
        "getFile": {"file_id": own_file["file_id"]},
    }
    assert set(calls) == {m.name for m in METHODS}, "a method of the table is not exercised here"
    for method, params in calls.items():
        if params is None:
            continue
        before = len(tg.fake.calls)
        resp = await post(tg, method, alice, **params)
        body = await resp.json()
        assert resp.status == 200 and body["ok"] is True, (method, body)
        if method == "getMe":
            assert body["result"]["username"] == tgs.USERNAME and len(tg.fake.calls) == before
            continue
        sent = tg.fake.calls[-1]
        assert sent.method == method and len(tg.fake.calls) == before + 1
        if "chat_id" in sent.params:
            assert int(sent.params["chat_id"]) in (ALICE["id"], ALICE_GROUP["id"])


async def test_uploads_go_by_attach_for_every_media_method_and_albums(tg: TgGateway, alice: dict[str, str]):
    fields = {
        "sendPhoto": "photo",
        "sendDocument": "document",
        "sendVoice": "voice",
        "sendAudio": "audio",
        "sendVideo": "video",
        "sendAnimation": "animation",
        "sendVideoNote": "video_note",
        "sendSticker": "sticker",
    }
    for method, field in fields.items():
        content = f"{method} bytes".encode()
        form = aiohttp.FormData()
        form.add_field(field, "attach://main")
        form.add_field("main", content, filename="main.bin", content_type="application/octet-stream")
        if method != "sendPhoto" and method != "sendVoice" and method != "sendSticker":
            form.add_field("thumbnail", "attach://thumb")
            form.add_field("thumb", b"\xff\xd8 thumb", filename="t.jpg", content_type="image/jpeg")
        resp = await tg.client.post(f"/v1/telegram/{method}", data=form, headers=alice)
        assert resp.status == 200, (method, await resp.text())
        call = tg.fake.sent(method)[-1]
        assert call.params[field] == "attach://main" and call.files["main"][2] == content
        ref = (await resp.json())["result"][field]
        ref = ref[-1] if isinstance(ref, list) else ref
        download = await tg.client.get(f"/v1/telegram/files/{ref['file_id']}", headers=alice)
        assert download.status == 200 and await download.read() == content
    form = aiohttp.FormData()
    media = [{"type": "photo", "media": "attach://p1", "caption": "one"}, {"type": "document", "media": "attach://p2"}]
    form.add_field("media", orjson.dumps(media).decode())
    form.add_field("p1", b"photo one", filename="1.jpg", content_type="image/jpeg")
    form.add_field("p2", b"document two", filename="2.txt", content_type="text/plain")
    resp = await tg.client.post("/v1/telegram/sendMediaGroup", data=form, headers=alice)
    assert resp.status == 200, await resp.text()
    album = (await resp.json())["result"]
    assert len(album) == 2 and album[0]["media_group_id"] == album[1]["media_group_id"]
    got = await tg.client.get(f"/v1/telegram/files/{album[1]['document']['file_id']}", headers=alice)
    assert await got.read() == b"document two"
    # The album's own file ids may be sent again, e.g. as a single photo.
    again = await post(tg, "sendPhoto", alice, photo=album[0]["photo"][-1]["file_id"])
    assert again.status == 200


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"media": '[{"type": "photo", "media": "attach://missing"}, {"type": "photo", "media": "attach://p"}]'}, 400),
        ({"media": '[{"type": "photo", "media": "https://x.example/a.jpg"}, {"type": "photo", "media": "x"}]'}, 404),
    ],
)
async def test_an_album_naming_a_missing_part_or_an_unknown_file_is_refused(
    tg: TgGateway, alice: dict[str, str], fields: dict[str, str], code: int
):
    calls = len(tg.fake.calls)
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("p", b"photo", filename="p.jpg", content_type="image/jpeg")
    form.add_field("stray", b"not named anywhere", filename="s.bin", content_type="application/octet-stream")
    resp = await tg.client.post("/v1/telegram/sendMediaGroup", data=form, headers=alice)
    assert resp.status == code and "error" in await resp.json()
    assert len(tg.fake.calls) == calls


@pytest.mark.parametrize("spacing", [" ", "\n", "\t", "\r\n  "])
async def test_reply_parameters_with_whitespace_cannot_reach_another_users_chat(
    tg: TgGateway, dedicated: DedicatedServer, alice: dict[str, str], spacing: str
):
    secret, message = await bob_with_a_document(tg, dedicated)
    calls = len(tg.fake.calls)
    quoted = spacing + orjson.dumps({"chat_id": BOB["id"], "message_id": message["message_id"]}).decode() + spacing
    resp = await tg.client.post(
        "/v1/telegram/sendMessage", data={"text": "look", "reply_parameters": quoted}, headers=alice
    )
    assert resp.status == 403 and (await resp.json())["error"] == "chat_not_allowed"
    assert len(tg.fake.calls) == calls
    # Telegram never quoted Bob's message to Alice, so his file is not hers to fetch.
    download = await tg.client.get(f"/v1/telegram/files/{secret['file_id']}", headers=alice)
    assert download.status == 404
    assert len(tg.fake.calls) == calls


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("reply_parameters", '{"chat_id": %(bob)d, "chat_id": %(alice)d, "message_id": %(id)d}'),
        ("reply_parameters", '{"message_id": %(id)d, "quote": {"a": 1, "a": 2}}'),
        ("reply_markup", '{"inline_keyboard": [[{"text": "x", "text": "y", "callback_data": "z"}]]}'),
        ("entities", '[{"type": "bold", "offset": 0, "length": 1, "type": "italic"}]'),
        ("link_preview_options", '{"is_disabled": true, "is_disabled": false}'),
    ],
)
async def test_a_repeated_key_at_any_depth_is_400_and_nothing_is_sent(
    tg: TgGateway, dedicated: DedicatedServer, alice: dict[str, str], name: str, text: str
):
    _, message = await bob_with_a_document(tg, dedicated)
    value = text % {"bob": BOB["id"], "alice": ALICE["id"], "id": message["message_id"]}
    calls = len(tg.fake.calls)
    for how in ("form", "json-text"):
        if how == "form":
            resp = await tg.client.post("/v1/telegram/sendMessage", data={"text": "x", name: value}, headers=alice)
        else:
            resp = await post(tg, "sendMessage", alice, text="x", **{name: value})
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "invalid_parameter", body
    assert len(tg.fake.calls) == calls


async def test_repeated_parameters_in_a_body_form_or_multipart_are_400(tg: TgGateway, alice: dict[str, str]):
    calls = len(tg.fake.calls)
    own, other = ALICE["id"], BOB["id"]
    raw_json = f'{{"chat_id": {other}, "chat_id": {own}, "text": "x"}}'.encode()
    resp = await tg.client.post(
        "/v1/telegram/sendMessage", data=raw_json, headers={**alice, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    resp = await tg.client.post(
        "/v1/telegram/sendMessage",
        data=f"chat_id={other}&chat_id={own}&text=x".encode(),
        headers={**alice, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_parameter"
    form = aiohttp.FormData()
    form.add_field("text", "x")
    form.add_field("photo", "attach://p")
    form.add_field("photo", b"img", filename="p.jpg", content_type="image/jpeg")
    resp = await tg.client.post("/v1/telegram/sendPhoto", data=form, headers=alice)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_parameter"
    assert len(tg.fake.calls) == calls


async def test_telegram_gets_the_re_encoded_value_never_the_callers_text(tg: TgGateway, alice: dict[str, str]):
    first = await post(tg, "sendMessage", alice, text="original")
    message_id = (await first.json())["result"]["message_id"]
    caller_text = f'  {{ "message_id" : {message_id} ,\n "chat_id": " {ALICE["id"]} " }}\t'
    markup_text = ' {"inline_keyboard": [[{"text": "Ok", "callback_data": "ok"}]]} '
    resp = await tg.client.post(
        "/v1/telegram/sendMessage",
        data={"text": "reply", "reply_parameters": caller_text, "reply_markup": markup_text, "chat_id": " 111000111"},
        headers=alice,
    )
    assert resp.status == 200, await resp.text()
    sent = tg.fake.sent()[-1]
    assert sent.params["reply_parameters"] == orjson.dumps({"message_id": message_id, "chat_id": ALICE["id"]}).decode()
    assert sent.params["reply_markup"] == '{"inline_keyboard":[[{"text":"Ok","callback_data":"ok"}]]}'
    assert sent.params["chat_id"] == str(ALICE["id"])


@pytest.mark.parametrize(
    "value",
    [
        '{"chat_id": "@bobs_channel", "message_id": 1}',
        '{"chat_id": 1e400, "message_id": 1}',
        '{"chat_id": NaN, "message_id": 1}',
        '{"chat_id": 222000222.0, "message_id": 1}',
        '{"chat_id": "٢٢٢٠٠٠٢٢٢", "message_id": 1}',
        '{"message_id": 1, "quote": "\\ud800"}',
        '{"message_id": 1} {"chat_id": 222000222}',
        "[1, 2]",
    ],
)
async def test_reply_parameters_that_are_not_one_plain_own_chat_are_refused(
    tg: TgGateway, alice: dict[str, str], value: str
):
    calls = len(tg.fake.calls)
    resp = await tg.client.post(
        "/v1/telegram/sendMessage", data={"text": "x", "reply_parameters": value}, headers=alice
    )
    assert resp.status in (400, 403), await resp.text()
    assert (await resp.json())["error"] in ("invalid_parameter", "chat_not_allowed")
    assert len(tg.fake.calls) == calls


async def test_files_quoted_in_an_answer_do_not_become_the_callers(
    tg: TgGateway, dedicated: DedicatedServer, alice: dict[str, str]
):
    # A message in Alice's chat from before it was hers (Telegram keeps history; the gateway never
    # routed it to her): a reply to it shows its file, but that file does not become usable.
    old = tg.fake.add_file(b"a previous owner's scan", "documents/old.pdf")
    history = tgs.message(tgs.private_chat(ALICE), ALICE, document={**old, "file_name": "old.pdf"})
    tg.fake.remember(history)
    resp = await post(
        tg, "sendMessage", alice, text="re", reply_parameters={"message_id": history["message"]["message_id"]}
    )
    body = await resp.json()
    assert resp.status == 200 and body["result"]["reply_to_message"]["document"]["file_id"] == old["file_id"]
    download = await tg.client.get(f"/v1/telegram/files/{old['file_id']}", headers=alice)
    assert download.status == 404
    resend = await post(tg, "sendDocument", alice, document=old["file_id"])
    assert resend.status == 404 and (await resend.json())["error"] == "unknown_file"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("sendMessage", {"text": "x", "business_connection_id": "abc"}),
        ("sendMessage", {"text": "x", "caption": "not a sendMessage parameter"}),
        ("getFile", {"file_id": "x", "chat_id": 111000111}),
        ("sendMessage", {"text": {"nested": "object"}}),
        ("sendMessage", {"text": "x", "reply_markup": ["not", "an", "object"]}),
    ],
)
async def test_parameters_the_table_does_not_give_a_method_are_400(
    tg: TgGateway, alice: dict[str, str], method: str, params: dict[str, Any]
):
    calls = len(tg.fake.calls)
    resp = await post(tg, method, alice, **params)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_parameter"
    assert len(tg.fake.calls) == calls


async def test_a_json_body_without_content_type_is_read_as_json(tg: TgGateway, alice: dict[str, str]):
    body = orjson.dumps({"text": "no header"})
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
        resp = await tg.client.post(
            "/v1/telegram/sendMessage", data=body, headers={**alice, **headers}, skip_auto_headers=["Content-Type"]
        )
        assert resp.status == 200, await resp.text()
        assert tg.fake.sent()[-1].params["text"] == "no header"
    calls = len(tg.fake.calls)
    resp = await tg.client.post(
        "/v1/telegram/sendMessage", data=b"text=hi", headers=alice, skip_auto_headers=["Content-Type"]
    )
    assert resp.status == 415
    body_json = await resp.json()
    assert body_json["error"] == "missing_content_type" and "Content-Type" in body_json["detail"]
    assert len(tg.fake.calls) == calls


def test_the_openapi_method_list_is_the_table():
    spec = yaml.safe_load((DOCS.parent / "openapi.yaml").read_text())
    parameter = spec["paths"]["/v1/telegram/{method}"]["parameters"][0]
    assert parameter["schema"]["enum"] == [m.name for m in METHODS]


async def test_every_method_spends_the_chats_budget_not_only_messages(tg: TgGateway, dedicated: DedicatedServer):
    # Default limits: 3 at once per chat, then one a second. Chat actions and a file lookup (which
    # names no chat, so it counts against the private chat) queue behind each other like messages.
    created = await tg.create_user(dedicated, "ua")
    await tg.link_private(dedicated, "ua", ALICE)
    auth = tg.server_headers(created["server_token"])
    own = tg.fake.add_file(b"alice's note", "documents/n.txt")
    update = tgs.message(tgs.private_chat(ALICE), ALICE, document={**own, "file_name": "n.txt"})
    assert (await tg.post_update(update)).status == 200
    await dedicated.wait_for(lambda: any(e["type"] == "telegram.update" for e in dedicated.events("ua")))
    calls = [post(tg, "sendChatAction", auth, action="typing") for _ in range(4)]
    calls.append(post(tg, "getFile", auth, file_id=own["file_id"]))
    answers = [await c for c in calls]
    assert [a.status for a in answers] == [200] * 5
    times = sorted(c.at for c in tg.fake.calls if c.method in ("sendChatAction", "getFile"))
    assert times[3] - times[0] >= 0.9 and times[4] - times[0] >= 1.9
