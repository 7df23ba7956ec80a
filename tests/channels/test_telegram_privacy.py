"""Telegram's share of export and erasure: linked chats in the export, nothing of the user left
after erasure (global chat routes included), and the chat treated as never linked afterwards."""

from __future__ import annotations

from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.erasure import wait_gone
from tests.support.export import validate
from tests.support.gateway import random_public_key
from tests.support.redisdump import containing, dump
from tests.support.telegram_gateway import TgGateway

ALICE = tgs.person(5550001, "Alice", "alice_privacy")
FAMILY = tgs.group_chat(-4000000123, "Family")


async def link_both(tg: TgGateway, dedicated: DedicatedServer, user_id: str) -> None:
    await tg.create_user(dedicated, user_id)
    await tg.link_private(dedicated, user_id, ALICE)
    assert (await tg.post_update(tgs.chat_member(FAMILY, ALICE, "left", "member"))).status == 200
    await dedicated.wait_for(lambda: len([e for e in dedicated.events(user_id) if e["type"] == "telegram.linked"]) == 2)


async def test_export_lists_linked_chats_and_matches_the_schema(tg: TgGateway, dedicated: DedicatedServer):
    await link_both(tg, dedicated, "tg-export")
    resp = await tg.admin("GET", "/admin/v1/users/tg-export/export")
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    part = document["telegram"]
    assert part["private_chat_id"] == ALICE["id"]
    assert sorted((c["chat_id"], c["type"], c["via"]) for c in part["chats"]) == [
        (FAMILY["id"], "group", "group"),
        (ALICE["id"], "private", "start"),
    ]


async def test_the_link_hook_is_what_the_admin_api_and_the_operator_command_use(tg: TgGateway):
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    assert (await tg.admin("PUT", "/admin/v1/users/tg-link", json=body)).status == 201
    link = await tg.services.hooks.link["telegram"]("tg-link")
    assert link["url"] == f"https://t.me/{tgs.USERNAME}?start={link['code']}"
    assert link["expires_at"].endswith("Z")


async def test_erasure_unlinks_every_chat_and_leaves_nothing(tg: TgGateway, dedicated: DedicatedServer):
    user = "tg-erase"
    await link_both(tg, dedicated, user)
    # Outbound use leaves per-user limiter state, which must go too.
    rotated = await tg.admin("POST", f"/admin/v1/users/{user}/credentials/rotate")
    server_token = (await rotated.json())["server_token"]
    resp = await tg.client.post(
        "/v1/telegram/sendMessage", headers=tg.server_headers(server_token), json={"text": "hello"}
    )
    assert resp.status == 200
    assert (await tg.admin("DELETE", f"/admin/v1/users/{user}")).status == 202
    await wait_gone(tg, user)

    snapshot = await dump(tg.services.redis, tg.settings.key_prefix)
    assert containing(snapshot, user.encode()) == []
    assert containing(snapshot, f"tg:chat:{ALICE['id']}".encode()) == []
    assert containing(snapshot, f"tg:chat:{FAMILY['id']}".encode()) == []

    # The chat is a stranger now: it gets the how-to-link hint and nothing is queued or stored.
    before = len(tg.fake.sent("sendMessage", ALICE["id"]))
    assert (await tg.post_update(tgs.text(tgs.private_chat(ALICE), ALICE, "still there?"))).status == 200
    await tg.fake.wait_for(lambda: len(tg.fake.sent("sendMessage", ALICE["id"])) > before)
    assert containing(await dump(tg.services.redis, tg.settings.key_prefix), b"still there?") == []
