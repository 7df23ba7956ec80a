"""The tenant authorization matrix: Alice's server credential against every `/v1` endpoint naming
Bob's chats, files, callback queries and connections is 403/404 and changes nothing anywhere;
no credential, a malformed one, one rotated out past its overlap, or an erased user's is 401."""

from __future__ import annotations

import time
import types
from typing import Any

import orjson
import pytest
from aiohttp import FormData

from routing import registry
from tests.hostile.checks import assert_error_json, assert_sane, read
from tests.hostile.world import MODEL, Tenant, World
from tests.support.mail import expire_access_token

pytestmark = pytest.mark.asyncio(loop_scope="package")

Call = tuple[str, str, dict[str, Any]]


def bot(method: str, **body: Any) -> Call:
    return ("POST", f"/v1/telegram/{method}", {"json": body})


FORBIDDEN, UNKNOWN_FILE, UNKNOWN_QUERY = (
    (403, "chat_not_allowed"),
    (404, "unknown_file"),
    (404, "unknown_callback_query"),
)


def bobs_things(alice: Tenant, bob: Tenant) -> list[tuple[str, Call, tuple[int, str]]]:
    """(what, (method, path, request kwargs), (expected status, expected code))."""
    own = alice.private_chat
    calls: list[tuple[str, Call, tuple[int, str]]] = []
    for chat in (bob.private_chat, bob.group_chat, str(bob.private_chat), f" {bob.group_chat}"):
        for method, extra in (
            ("sendMessage", {"text": "hi"}),
            ("sendChatAction", {"action": "typing"}),
            ("editMessageText", {"message_id": 5, "text": "changed"}),
            ("editMessageReplyMarkup", {"message_id": 5, "reply_markup": {"inline_keyboard": []}}),
            ("deleteMessage", {"message_id": 5}),
            ("sendPhoto", {"photo": alice.file_id}),
            ("sendDocument", {"document": alice.file_id}),
            ("sendVoice", {"voice": alice.file_id}),
        ):
            calls.append((f"{method} to {chat!r}", bot(method, chat_id=chat, **extra), FORBIDDEN))
    into_bobs = {"message_id": 1, "chat_id": bob.private_chat}
    as_text = {"chat_id": str(own), "text": "x", "reply_parameters": orjson.dumps(into_bobs).decode()}
    form = FormData({"chat_id": str(bob.group_chat), "text": "as a form"})
    calls += [
        ("sendMessage as a form", ("POST", "/v1/telegram/sendMessage", {"data": form}), FORBIDDEN),
        ("a reply into Bob's chat", bot("sendMessage", chat_id=own, text="x", reply_parameters=into_bobs), FORBIDDEN),
        ("the same, as form text", ("POST", "/v1/telegram/sendMessage", {"data": as_text}), FORBIDDEN),
        (
            "an inline message",
            bot("editMessageText", inline_message_id="AgAAAN", text="x"),
            (403, "inline_message_unsupported"),
        ),
        ("Bob's photo", bot("sendPhoto", chat_id=own, photo=bob.file_id), UNKNOWN_FILE),
        ("Bob's document", bot("sendDocument", chat_id=own, document=bob.file_id), UNKNOWN_FILE),
        (
            "Bob's file as a thumbnail",
            bot("sendDocument", chat_id=own, document=alice.file_id, thumbnail=bob.file_id),
            UNKNOWN_FILE,
        ),
        ("Bob's voice", bot("sendVoice", chat_id=own, voice=bob.file_id), UNKNOWN_FILE),
        ("getFile of Bob's file", bot("getFile", file_id=bob.file_id), UNKNOWN_FILE),
        ("download of Bob's file", ("GET", f"/v1/telegram/files/{bob.file_id}", {}), UNKNOWN_FILE),
        ("Bob's callback query", bot("answerCallbackQuery", callback_query_id=bob.callback_query_id), UNKNOWN_QUERY),
    ]
    return calls


async def test_alice_cannot_reach_bobs_chats_files_or_callback_queries(world: World):
    alice, bob = world.alice, world.bob
    before = await world.effects()
    failures = []
    for what, (method, path, kwargs), (status, code) in bobs_things(alice, bob):
        answer = await read(await world.client.request(method, path, headers=alice.auth, **kwargs))
        assert_sane(answer, world.secrets)
        if answer.status != status or assert_error_json(answer) != code:
            failures.append((what, answer.status, answer.body[:200]))
    assert not failures, failures
    assert await world.effects() == before, "a refused call had an effect"
    # The same calls on Alice's own things do go out: the refusals above were about ownership.
    resp = await world.client.post(
        "/v1/telegram/sendPhoto", json={"chat_id": alice.group_chat, "photo": alice.file_id}, headers=alice.auth
    )
    assert resp.status == 200, await resp.text()
    resp = await world.client.post(
        "/v1/telegram/answerCallbackQuery", json={"callback_query_id": alice.callback_query_id}, headers=alice.auth
    )
    assert resp.status == 200, await resp.text()
    assert (await world.effects()).bot_api_calls == before.bot_api_calls + 2


IMPERSONATION = (
    {"params": {"user_id": "bob"}},
    {"headers": {"X-User-Id": "bob", "X-Forwarded-User": "bob", "X-Ally-User": "bob"}},
)


async def test_alice_sees_and_leases_only_her_own_connections_and_bobs_token_is_never_refreshed(world: World):
    alice, bob = world.alice, world.bob
    await expire_access_token(world.tg, bob.user_id, "google")
    before = await world.effects()
    for extra in ({}, *IMPERSONATION):
        headers = {**alice.auth, **extra.get("headers", {})}
        params = extra.get("params", {})
        answer = await read(await world.client.get("/v1/connections", headers=headers, params=params))
        assert answer.status == 200
        assert {c["account"] for c in answer.json} == {alice.gmail, alice.outlook}
        assert bob.gmail.encode() not in answer.body and bob.outlook.encode() not in answer.body
        for provider in ("google", "microsoft"):
            resp = await world.client.post(
                f"/v1/connections/{provider}/token", json={"min_ttl": 60}, headers=headers, params=params
            )
            answer = await read(resp)
            assert answer.status == 200, answer.body
            assert answer.json["account"] in (alice.gmail, alice.outlook)
    assert await world.effects() == before, "Alice's calls refreshed or touched Bob's grant"
    # Bob's own server does get his token refreshed: the check above could have failed.
    resp = await world.client.post("/v1/connections/google/token", json={"min_ttl": 60}, headers=bob.auth)
    assert resp.status == 200 and (await resp.json())["account"] == bob.gmail
    assert world.google.refreshes == before.token_refreshes + 1


async def test_usage_and_ping_are_the_callers_own(world: World):
    alice, bob = world.alice, world.bob
    alices = await (await world.client.get("/v1/ai/usage", headers=alice.auth)).json()
    resp = await world.client.post(
        "/v1/ai/messages",
        json={"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        headers=bob.auth,
    )
    assert resp.status == 200, await resp.text()
    bobs = await (await world.client.get("/v1/ai/usage", headers=bob.auth)).json()
    assert bobs["total_tokens"] > 0
    for extra in ({}, *IMPERSONATION):
        headers = {**alice.auth, **extra.get("headers", {})}
        params = extra.get("params", {})
        usage = await (await world.client.get("/v1/ai/usage", headers=headers, params=params)).json()
        assert usage == alices
        ping = await (await world.client.post("/v1/ping", headers=headers, params=params)).json()
        assert ping["user_id"] == alice.user_id


ENDPOINTS = (
    ("POST", "/v1/ping"),
    ("POST", "/v1/telegram/sendMessage"),
    ("POST", "/v1/telegram/getFile"),
    ("GET", "/v1/telegram/files/BQACAgIAAxkBAAI"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections/google/token"),
    ("DELETE", "/v1/connections/google"),
    ("POST", "/v1/ai/messages"),
    ("GET", "/v1/ai/usage"),
)


async def refused_everywhere(world: World, authorization: str | None) -> list[tuple[str, int]]:
    """Every endpoint answered 401 with a JSON error and nothing happened; else the misses."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    misses = []
    before = await world.effects()
    for method, path in ENDPOINTS:
        body = {"text": "hi", "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        answer = await read(await world.client.request(method, path, json=body, headers=headers))
        assert_sane(answer, world.secrets)
        if answer.status != 401 or assert_error_json(answer) != "unauthorized":
            misses.append((f"{method} {path}", answer.status))
    assert await world.effects() == before
    return misses


async def test_no_or_malformed_credentials_are_401_everywhere(world: World):
    alice, bob = world.alice, world.bob
    secret = alice.token.split(".", 2)[2]
    for authorization in (
        None,
        "",
        "Bearer",
        f"Basic {alice.token}",
        f"Bearer ast.bob.{secret}",  # Alice's secret under Bob's name
        f"Bearer ast.alice.{bob.token.split('.', 2)[2]}",
        f"Bearer {alice.token[:-1]}",
        f"Bearer {alice.token}x",
        f"Bearer {alice.token.upper()}",
        f"Bearer {world.tg.settings.admin_token}",
        f"Bearer {bob.webhook_secret}",
    ):
        assert await refused_everywhere(world, authorization) == [], authorization


async def test_a_rotated_out_credential_is_401_past_its_overlap(world: World, monkeypatch: pytest.MonkeyPatch):
    created = await world.tg.create_user(world.dedicated, "erin")
    first = created["server_token"]
    resp = await world.tg.admin("POST", "/admin/v1/users/erin/credentials/rotate")
    second = (await resp.json())["server_token"]
    for token in (first, second):
        resp = await world.client.post("/v1/ping", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, "both are good during the overlap"
    # A day and a second later, for the registry: the previous token is no longer good.
    later = time.time() + registry.OVERLAP + 1
    monkeypatch.setattr(registry, "time", types.SimpleNamespace(time=lambda: later))
    assert await refused_everywhere(world, f"Bearer {first}") == []
    resp = await world.client.post("/v1/ping", headers={"Authorization": f"Bearer {second}"})
    assert resp.status == 200
    monkeypatch.undo()
    # A second rotation retires the first token at once, overlap or not.
    resp = await world.tg.admin("POST", "/admin/v1/users/erin/credentials/rotate")
    assert resp.status == 200
    assert await refused_everywhere(world, f"Bearer {first}") == []


async def test_an_erased_users_credential_is_401_from_the_moment_erasure_is_accepted(world: World):
    created = await world.tg.create_user(world.dedicated, "frank")
    token = f"Bearer {created['server_token']}"
    resp = await world.client.post("/v1/ping", headers={"Authorization": token})
    assert resp.status == 200
    resp = await world.tg.admin("DELETE", "/admin/v1/users/frank")
    assert resp.status == 202
    assert await refused_everywhere(world, token) == []
