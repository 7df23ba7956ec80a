"""The leak test: every channel driven end to end with unique marker strings in message text,
captions, file names, email addresses, tokens and secrets — the user's server down part of the
time — and then none of them in Redis (every key and value), in Redis's AOF on disk, or in the
logs at their most talkative level. Only sealed ciphertext may carry them, and it cannot be
searched: the markers must reach the dedicated server, opened, to show they went through.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from foundation.types import Event
from oauth.providers import Grant
from oauth.store import Tokens
from routing.handoff import Item
from tests.support import gemini as gemini_wire
from tests.support import openai as openai_wire
from tests.support import telegram as tgs
from tests.support.anthropic import API_KEY, AnthropicStandIn, error, message, stream
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings, serve
from tests.support.leaks import Markers, assert_nothing_leaked, leaks, log_output
from tests.support.redis_servers import RedisServer
from tests.support.telegram import FakeTelegram

pytestmark = pytest.mark.slow
__all__ = ["log_output"]  # fixtures shared with the other leak tests

USER = "leaky"
TG_SECRET = "leak-webhook-secret-" + os.urandom(8).hex()


@pytest.fixture
async def gateway(
    tmp_path: Path,
    redis_server: RedisServer,
    anthropic_api: AnthropicStandIn,
    openai_api: openai_wire.OpenAIStandIn,
    gemini_api: gemini_wire.GeminiStandIn,
    fake_tg: FakeTelegram,
    log_output: io.StringIO,
) -> AsyncIterator[Gateway]:
    settings = make_settings(
        tmp_path,
        redis_url=redis_server.url,
        telegram_bot_token=fake_tg.token,
        telegram_api_url=fake_tg.url,
        telegram_webhook_secret=TG_SECRET,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic_api.url,
        google_client_id="client-leak.apps.googleusercontent.com",
        google_client_secret="GOCSPX-" + os.urandom(12).hex(),
        google_revoke_uri="http://127.0.0.1:9/revoke",
        ai_attempts=1,
        ai_backoff=0.0,
        ai_timeout=5.0,
        ai_fallbacks=("openai:gpt-leak", "google:gemini-leak"),
        openai_api_key=openai_wire.API_KEY,
        openai_base_url=openai_api.base_url,
        gemini_api_key=gemini_wire.API_KEY,
        gemini_base_url=gemini_api.url,
    )
    async with serve(settings) as gateway:
        yield gateway


async def drive_core(gateway: Gateway, dedicated: DedicatedServer, m: Markers) -> dict[str, str]:
    """Registration, hand-off of channel-shaped events while the server is down then up, bad requests."""
    created = await gateway.create_user(dedicated, USER)
    m.secret("server_token", created["server_token"])
    m.secret("webhook_secret", created["webhook_secret"].removeprefix("whsec_"))
    m.secret("admin_token", gateway.settings.admin_token or "")
    for key in gateway.settings.master_keys:
        m.secret("master_key", base64.urlsafe_b64encode(key.key).decode().rstrip("="))
    m.secret("google_client_secret", gateway.settings.google_client_secret or "")
    m.secret("anthropic_api_key", API_KEY)
    m.secret("openai_api_key", openai_wire.API_KEY)
    m.secret("gemini_api_key", gemini_wire.API_KEY)

    dedicated.mode[USER] = "down"
    payloads: list[dict[str, Any]] = [
        {"update_id": 1, "message": {"message_id": 1, "text": f"hello {m('message_text')}"}},
        {
            "update_id": 2,
            "message": {"message_id": 2, "caption": m("caption"), "document": {"file_name": m("file_name")}},
        },
        {"email_address": f"{m('email_local')}@example.com", "history_id": "9876"},
    ]
    items = [Item(Event("telegram.update", "telegram", p), dedup=str(i)) for i, p in enumerate(payloads)]
    await gateway.services.handoff(USER, items, dedup_scope="leak")
    await dedicated.wait_for(lambda: any(u == USER for u, _ in dedicated.attempts))

    # Requests that carry secrets where they do not belong.
    wrong = m("admin_bearer")
    resp = await gateway.client.get(f"/admin/v1/users/{USER}", headers={"Authorization": f"Bearer {wrong}"})
    assert resp.status == 401
    resp = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer ast.{USER}.{m('forged_token')}"})
    assert resp.status == 401
    resp = await gateway.admin("PUT", f"/admin/v1/users/{USER}", data=f'{{"note": "{m("json_body")}"'.encode())
    assert resp.status == 400

    dedicated.mode[USER] = "ok"
    auth = {"Authorization": f"Bearer {created['server_token']}"}
    assert (await gateway.client.post("/v1/ping", headers=auth)).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events(USER)) >= 3)
    return auth


async def drive_telegram(
    gateway: Gateway, fake: FakeTelegram, dedicated: DedicatedServer, m: Markers, auth: dict[str, str]
) -> None:
    """Linking, every kind of content in updates (server down meanwhile), a stranger, a forged
    secret, and the server's own Bot API calls: text, an upload, and a file streamed back."""
    m.secret("bot_token", fake.token.split(":")[1])
    m.secret("telegram_webhook_secret", TG_SECRET)

    async def post(update: dict[str, Any], secret: str = TG_SECRET) -> int:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        resp = await gateway.client.post(f"/telegram/webhook/{tgs.BOT_ID}", json=update, headers=headers)
        return resp.status

    alice = tgs.person(7770001, m("tg_first_name"), m("tg_username"))
    chat = tgs.private_chat(alice)
    resp = await gateway.admin("POST", f"/admin/v1/users/{USER}/telegram/link")
    code = m.secret("link_code", (await resp.json())["code"])
    assert await post(tgs.start(chat, alice, code)) == 200

    dedicated.mode[USER] = "down"
    content = f"%PDF {m('tg_file_content')}".encode()
    shared = fake.add_file(content, f"documents/{m('tg_file_path')}.pdf")
    updates = [
        tgs.text(chat, alice, f"dear diary {m('tg_text')}"),
        tgs.message(chat, alice, photo=[{**shared, "width": 90, "height": 90}], caption=m("tg_caption")),
        tgs.message(chat, alice, document={**shared, "file_name": f"{m('tg_file_name')}.pdf"}),
        tgs.message(chat, alice, contact={"phone_number": "+491701234567", "first_name": m("tg_contact_name")}),
    ]
    for update in updates:
        assert await post(update) == 200
    stranger = tgs.person(7770002, "Eve", None)
    assert await post(tgs.text(tgs.private_chat(stranger), stranger, m("tg_stranger_text"))) == 200
    assert await post(tgs.text(chat, alice, m("tg_forged_text")), secret=m("tg_forged_secret")) == 401
    dedicated.mode[USER] = "ok"
    assert (await gateway.client.post("/v1/ping", headers=auth)).status == 200
    await dedicated.wait_for(
        lambda: len([e for e in dedicated.events(USER) if e["type"] == "telegram.update"]) >= len(updates)
    )

    resp = await gateway.client.post("/v1/telegram/sendMessage", headers=auth, json={"text": m("tg_reply")})
    assert resp.status == 200
    form = aiohttp.FormData()
    form.add_field("caption", m("tg_upload_caption"))
    upload = f"upload {m('tg_upload_content')}".encode()
    form.add_field("document", upload, filename=f"{m('tg_upload_name')}.txt", content_type="text/plain")
    resp = await gateway.client.post("/v1/telegram/sendDocument", headers=auth, data=form)
    assert resp.status == 200
    resp = await gateway.client.get(f"/v1/telegram/files/{shared['file_id']}", headers=auth)
    assert resp.status == 200
    assert await resp.read() == content


async def drive_oauth(gateway: Gateway, m: Markers, auth: dict[str, str]) -> None:
    """A stored Google grant (tokens and account address sealed by the vault), leased to the server."""
    access = f"ya29.a0Af{m('access_token')}"
    refresh = f"1//0g{m('refresh_token')}"
    account = f"{m('account_email')}@gmail.com"
    tokens = Tokens(access_token=access, expires_at=time.time() + 3600, refresh_token=refresh, scopes=("openid",))
    await gateway.broker.connected(USER, "google", Grant(account=account, tokens=tokens))
    resp = await gateway.client.post("/v1/connections/google/token", headers=auth, json={"min_ttl": 60})
    assert resp.status == 200
    assert (await resp.json())["access_token"] == access
    resp = await gateway.client.get("/v1/connections", headers=auth)
    assert (await resp.json())[0]["account"] == account


async def drive_ai(gateway: Gateway, api: AnthropicStandIn, m: Markers, auth: dict[str, str]) -> None:
    """Prompts and answers through the relay, whole and streamed, and a provider error that echoes the prompt."""
    answer = m("ai_answer")
    api.plan("claude-leak-1", message(f"answer {answer}"))
    body = {"model": "claude-leak-1", "max_tokens": 64, "messages": [{"role": "user", "content": m("ai_prompt")}]}
    resp = await gateway.client.post("/v1/ai/messages", headers=auth, json=body)
    assert resp.status == 200
    assert answer in await resp.text()
    api.plan("claude-leak-2", stream(("part ", m("ai_stream"))))
    body = {"model": "claude-leak-2", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    resp = await gateway.client.post("/v1/ai/messages", headers=auth, json=body)
    assert resp.status == 200
    await resp.read()
    echoed = m("ai_error_echo")
    api.plan("claude-leak-3", error(400, f"messages.0.content: prompt is too long: {echoed}"))
    body = {"model": "claude-leak-3", "max_tokens": 64, "messages": [{"role": "user", "content": echoed}]}
    resp = await gateway.client.post("/v1/ai/messages", headers=auth, json=body)
    assert resp.status == 400


async def drive_fallbacks(
    gateway: Gateway,
    api: AnthropicStandIn,
    openai_api: openai_wire.OpenAIStandIn,
    gemini_api: gemini_wire.GeminiStandIn,
    m: Markers,
    auth: dict[str, str],
) -> None:
    """Anthropic overloaded: OpenAI answers whole and fails, Gemini streams a function call."""
    openai, gemini = openai_api, gemini_api
    api.plan("claude-leak-4", error(529, "Overloaded"))
    openai.plan("gpt-leak", openai_wire.completion(m("openai_answer")), openai_wire.error(500, m("openai_error")))
    gemini.plan(
        "gemini-leak", gemini_wire.stream((m("gemini_stream"),), function_calls=(("f", {"q": m("gemini_args")}),))
    )
    for streaming in (False, True):
        prompt = [{"role": "user", "content": m("fallback_prompt")}]
        body = {"model": "claude-leak-4", "max_tokens": 64, "stream": streaming, "messages": prompt}
        resp = await gateway.client.post("/v1/ai/messages", headers=auth, json=body)
        assert resp.status == 200
        assert resp.headers["ally-ai-provider"] == ("google" if streaming else "openai")
        await resp.read()


async def test_no_marker_reaches_redis_the_aof_or_the_logs(
    gateway: Gateway,
    dedicated: DedicatedServer,
    anthropic_api: AnthropicStandIn,
    openai_api: openai_wire.OpenAIStandIn,
    gemini_api: gemini_wire.GeminiStandIn,
    fake_tg: FakeTelegram,
    redis_server: RedisServer,
    log_output: io.StringIO,
):
    m = Markers()
    auth = await drive_core(gateway, dedicated, m)
    await drive_telegram(gateway, fake_tg, dedicated, m, auth)
    await drive_oauth(gateway, m, auth)
    await drive_ai(gateway, anthropic_api, m, auth)
    await drive_fallbacks(gateway, anthropic_api, openai_api, gemini_api, m, auth)
    # Gmail and Outlook add their drive_* here when they arrive.

    # The markers did reach the user's own server, opened there: the test looked where the data went.
    delivered = str([e["payload"] for e in dedicated.events(USER)]).encode()
    for kind in (
        "message_text",
        "caption",
        "file_name",
        "email_local",
        "account_email",
        "tg_text",
        "tg_caption",
        "tg_file_name",
        "tg_first_name",
    ):
        assert any(k == kind and v.encode() in delivered for v, k in m.all.items()), kind

    await assert_nothing_leaked(m, redis_server, log_output)


def test_the_search_finds_a_marker_in_each_form_it_looks_for():
    m = Markers()
    value = m("probe")
    for haystack in (
        f"x{value}y".encode(),
        base64.b64encode(b"pre" + value.encode() + b"post"),
        base64.urlsafe_b64encode(b"p" + value.encode()),
        value.encode().hex().encode(),
    ):
        assert leaks(m, haystack) == [f"probe: {value}"]
    assert leaks(m, b"nothing to see") == []
