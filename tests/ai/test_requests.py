from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import anthropic
import pytest

from foundation.config import Settings
from foundation.errors import ConfigError
from gateway.app import create_app
from tests.support.anthropic import AnthropicStandIn, message, stream
from tests.support.gateway import ADMIN_TOKEN, Gateway, make_settings
from tests.support.relay import PRIMARY, ask, server_token

GOOD = ask()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"hello"',
        {**GOOD, "model": ""},
        {**GOOD, "model": 5},
        {k: v for k, v in GOOD.items() if k != "model"},
        {k: v for k, v in GOOD.items() if k != "max_tokens"},
        {**GOOD, "max_tokens": "1024"},
        {**GOOD, "max_tokens": -1},
        {**GOOD, "max_tokens": True},
        {**GOOD, "messages": []},
        {**GOOD, "messages": "hello"},
        {**GOOD, "messages": [{"role": "system", "content": "x"}]},
        {**GOOD, "messages": [{"role": "user"}]},
        {**GOOD, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        {**GOOD, "messages": [["user", "hi"]]},
        {**GOOD, "stream": "yes"},
        {**GOOD, "system": 5},
        {**GOOD, "system": [{"text": "no type"}]},
        {**GOOD, "temperature": "hot"},
        {**GOOD, "stop_sequences": [1]},
        {**GOOD, "tools": {"name": "x"}},
        {**GOOD, "metadata": []},
    ],
)
async def test_garbage_is_a_400_json_error_and_reaches_no_model(
    gateway: Gateway, anthropic_api: AnthropicStandIn, body: object
):
    headers = await server_token(gateway)
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = await gateway.client.post("/v1/ai/messages", headers=headers, **kwargs)
    assert resp.status == 400
    assert (await resp.json())["error"] in ("invalid_request", "invalid_json")
    assert anthropic_api.calls == []


async def test_the_messages_fields_reach_the_model_rebuilt(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message())
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
    body = ask(temperature=0.2, system=system, tools=[tool], metadata={"user_id": "u-1"}, top_k=5)
    resp = await gateway.client.post("/v1/ai/messages", json=body, headers=headers)
    assert resp.status == 200
    sent = anthropic_api.calls[-1].body
    assert sent == {**body, "stream": False}
    assert "anthropic-beta" not in anthropic_api.calls[-1].headers


async def test_only_a_server_token_may_call(gateway: Gateway, anthropic_api: AnthropicStandIn):
    assert (await gateway.client.post("/v1/ai/messages", json=GOOD)).status == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await gateway.client.post("/v1/ai/messages", json=GOOD, headers=admin)).status == 401
    bad = {"Authorization": "Bearer ast.alice.not-the-secret"}
    assert (await gateway.client.post("/v1/ai/messages", json=GOOD, headers=bad)).status == 401
    assert anthropic_api.calls == []


async def test_the_official_sdk_works_against_the_relay(gateway: Gateway, anthropic_api: AnthropicStandIn):
    """A dedicated server can point Anthropic's SDK at `<gateway>/v1/ai` with its server token."""
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(("Hello", " from", " the relay")), message("whole"))
    client = anthropic.AsyncAnthropic(
        api_key=headers["Authorization"].removeprefix("Bearer "),
        base_url=str(gateway.client.make_url("/v1/ai")),
        max_retries=0,
    )
    try:
        async with client.messages.stream(
            model=PRIMARY, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as streamed:
            final = await streamed.get_final_message()
        assert final.content[0].type == "text" and final.content[0].text == "Hello from the relay"
        assert final.usage.input_tokens == 25 and final.usage.output_tokens == 15
        raw = await client.messages.with_raw_response.create(
            model=PRIMARY, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
        assert raw.headers["ally-ai-model"] == PRIMARY
        whole = await raw.parse()
        assert whole.content[0].type == "text" and whole.content[0].text == "whole"
    finally:
        await client.close()


class TestRelayOff:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, anthropic_api_key=None)

    async def test_messages_answer_503_and_usage_still_answers(self, gateway: Gateway, anthropic_api: AnthropicStandIn):
        headers = await server_token(gateway)
        resp = await gateway.client.post("/v1/ai/messages", json=GOOD, headers=headers)
        assert resp.status == 503 and (await resp.json())["error"] == "ai_disabled"
        resp = await gateway.client.get("/v1/ai/usage", headers=headers)
        assert resp.status == 200 and (await resp.json())["models"] == {}
        assert anthropic_api.calls == []


def test_a_fallback_naming_an_unknown_provider_stops_the_start(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"ALLY_AI_FALLBACKS.*known: anthropic, openai, google"):
        create_app(make_settings(tmp_path, ai_fallbacks=("claude-haiku-5-5", "mistral:large")))
    with pytest.raises(ConfigError, match="ALLY_OPENAI_API_KEY is not set"):
        create_app(make_settings(tmp_path, anthropic_api_key="k", ai_fallbacks=("openai:gpt-5",)))
    create_app(make_settings(tmp_path, anthropic_api_key="k", openai_api_key="o", ai_fallbacks=("openai:gpt-5",)))
    # Provider-qualified and dotted model ids are fine.
    create_app(make_settings(tmp_path, ai_fallbacks=("anthropic:claude-haiku-5-5", "us.anthropic.claude-x-v1:0")))


async def test_bodies_larger_than_the_admin_limit_are_accepted(gateway: Gateway, anthropic_api: AnthropicStandIn):
    """Images and documents travel inline; the Messages API takes up to 32 MB."""
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message())
    resp = await gateway.client.post(
        "/v1/ai/messages", data=io.BytesIO(json.dumps(ask("x" * (3 << 20))).encode()), headers=headers
    )
    assert resp.status == 200
    too_big = await gateway.client.post(
        "/v1/ai/messages", data=io.BytesIO(json.dumps(ask("x" * (33 << 20))).encode()), headers=headers
    )
    assert too_big.status == 413
    assert len(anthropic_api.calls) == 1


async def test_erasing_the_user_erases_its_usage(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message())
    await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    pattern = gateway.services.keys.user_key("alice", "ai:usage:*")
    assert [k async for k in gateway.services.redis.scan_iter(match=pattern)]
    assert (await gateway.admin("DELETE", "/admin/v1/users/alice")).status == 202
    await gateway.services.eraser.wait("alice")
    assert [k async for k in gateway.services.redis.scan_iter(match=pattern)] == []
