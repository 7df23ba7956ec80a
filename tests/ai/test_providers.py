"""Anthropic is down (529): OpenAI and Google AI serve, and the caller still speaks and hears Anthropic."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from foundation.config import Settings
from tests.support import gemini as gemini_api_module
from tests.support import openai as openai_api_module
from tests.support.anthropic import AnthropicStandIn, error
from tests.support.gateway import Gateway
from tests.support.gemini import GeminiStandIn
from tests.support.openai import OpenAIStandIn
from tests.support.relay import PRIMARY, ask, server_token
from tests.support.scripted import ScriptedApi

MODELS = {"openai": "gpt-test-5", "google": "gemini-test-3"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(params=["openai", "google"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(settings: Settings, provider: str, openai_api: OpenAIStandIn, gemini_api: GeminiStandIn) -> Settings:
    return dataclasses.replace(
        settings,
        ai_fallbacks=(f"{provider}:{MODELS[provider]}",),
        openai_api_key=openai_api_module.API_KEY,
        openai_base_url=openai_api.base_url,
        gemini_api_key=gemini_api_module.API_KEY,
        gemini_base_url=gemini_api.url,
    )


@pytest.fixture
def fallback(provider: str, openai_api: OpenAIStandIn, gemini_api: GeminiStandIn) -> ScriptedApi:
    return openai_api if provider == "openai" else gemini_api


@pytest.fixture
async def sdk(gateway: Gateway, anthropic_api: AnthropicStandIn) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official SDK pointed at the relay, as a dedicated server uses it; Anthropic overloaded."""
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    headers = await server_token(gateway)
    client = anthropic.AsyncAnthropic(
        api_key=headers["Authorization"].removeprefix("Bearer "),
        base_url=str(gateway.client.make_url("/v1/ai")),
        max_retries=0,
    )
    yield client
    await client.close()


def text_answer(provider: str, text: str, *, streaming: bool) -> Any:
    if provider == "openai":
        return openai_api_module.stream((text[:3], text[3:])) if streaming else openai_api_module.completion(text)
    return gemini_api_module.stream((text[:3], text[3:])) if streaming else gemini_api_module.answer(text)


def tool_answer(provider: str, args: dict[str, Any], *, streaming: bool) -> Any:
    calls = (("get_weather", args),)
    if provider == "openai":
        if streaming:
            return openai_api_module.stream(("Checking. ",), tool_calls=calls)
        return openai_api_module.completion("Checking. ", tool_calls=calls)
    if streaming:
        return gemini_api_module.stream(("Checking. ",), function_calls=calls)
    return gemini_api_module.answer("Checking. ", function_calls=calls)


async def usage_of(gateway: Gateway, provider: str) -> dict[str, Any]:
    status = await (await gateway.admin("GET", "/admin/v1/users/alice")).json()
    models: dict[str, Any] = status["ai"]["models"]
    assert set(models) == {MODELS[provider]}
    assert status["ai"]["providers"] == {
        provider: {k: v for k, v in models[MODELS[provider]].items() if k != "provider"}
    }
    entry: dict[str, Any] = models[MODELS[provider]]
    assert entry["provider"] == provider
    return entry


async def test_a_plain_request_is_served_in_anthropics_format(
    sdk: anthropic.AsyncAnthropic, gateway: Gateway, fallback: ScriptedApi, provider: str
):
    fallback.plan(MODELS[provider], text_answer(provider, "Bonjour!", streaming=False))
    raw = await sdk.messages.with_raw_response.create(
        model=PRIMARY, max_tokens=200, system="Answer in French.", stop_sequences=["END"],
        messages=[{"role": "user", "content": "Say hello"}], extra_body={"temperature": 0.3},
    )  # fmt: skip
    assert raw.headers["ally-ai-provider"] == provider and raw.headers["ally-ai-model"] == MODELS[provider]
    answer = await raw.parse()
    assert answer.type == "message" and answer.role == "assistant" and answer.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [("text", "Bonjour!")]
    sent = fallback.calls[-1].body
    if provider == "openai":
        assert sent["messages"] == [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Say hello"},
        ]
        assert (sent["max_completion_tokens"], sent["temperature"], sent["stop"]) == (200, 0.3, ["END"])
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (11, 7)
    else:
        assert sent["systemInstruction"]["parts"] == [{"text": "Answer in French."}]
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "Say hello"}]}]
        config = sent["generationConfig"]
        assert (config["maxOutputTokens"], config["temperature"], config["stopSequences"]) == (200, 0.3, ["END"])
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (13, 5)
    entry = await usage_of(gateway, provider)
    assert (entry["input_tokens"], entry["output_tokens"], entry["requests"]) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
        1,
    )


async def test_a_stream_is_read_by_the_anthropic_sdk(
    sdk: anthropic.AsyncAnthropic, gateway: Gateway, fallback: ScriptedApi, provider: str
):
    fallback.plan(MODELS[provider], text_answer(provider, "Hello there", streaming=True))
    async with sdk.messages.stream(
        model=PRIMARY, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as streamed:
        names = [event.type async for event in streamed]
        final = await streamed.get_final_message()
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(names)
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "Hello there")]
    assert final.stop_reason == "end_turn"
    expected = (21, 9) if provider == "openai" else (17, 8)
    assert (final.usage.input_tokens, final.usage.output_tokens) == expected
    if provider == "openai":
        assert fallback.calls[-1].body["stream_options"] == {"include_usage": True}
    else:
        assert fallback.calls[-1].path.endswith(":streamGenerateContent?alt=sse")
    entry = await usage_of(gateway, provider)
    assert (entry["input_tokens"], entry["output_tokens"]) == expected


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_a_two_turn_tool_use_conversation(
    sdk: anthropic.AsyncAnthropic, gateway: Gateway, fallback: ScriptedApi, provider: str, streaming: bool
):
    model = MODELS[provider]
    fallback.plan(
        model,
        tool_answer(provider, {"city": "Paris"}, streaming=streaming),
        text_answer(provider, "Sunny, 21 C", streaming=False),
    )
    asked: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    kwargs: dict[str, Any] = {"model": PRIMARY, "max_tokens": 300, "tools": [WEATHER]}
    if streaming:
        async with sdk.messages.stream(messages=asked, **kwargs) as streamed:
            deltas = [e.delta.type async for e in streamed if e.type == "content_block_delta"]
            first = await streamed.get_final_message()
        assert "input_json_delta" in deltas
    else:
        first = await sdk.messages.create(messages=asked, **kwargs)
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text == "Checking. "
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    turn_one = fallback.calls[-1].body
    if provider == "openai":
        assert turn_one["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": WEATHER["description"],
                    "parameters": WEATHER["input_schema"],
                },
            }
        ]
    else:
        declaration = turn_one["tools"][0]["functionDeclarations"][0]
        # Proto JSON takes field names in either spelling; this SDK sends this one snake_case.
        schema = declaration.get("parametersJsonSchema", declaration.get("parameters_json_schema"))
        assert declaration["name"] == "get_weather" and schema == WEATHER["input_schema"]

    asked += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 C, sunny"}]},
    ]
    second = await sdk.messages.create(messages=asked, **kwargs)
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    assert second.content[0].text == "Sunny, 21 C"
    sent = fallback.calls[-1].body
    if provider == "openai":
        assistant, tool = sent["messages"][1:]
        assert assistant["tool_calls"][0]["id"] == call.id
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": "21 C, sunny"}
    else:
        model_turn, user_turn = sent["contents"][1:]
        function_call = model_turn["parts"][1]
        assert function_call["functionCall"] == {"id": call.id, "name": "get_weather", "args": {"city": "Paris"}}
        assert "thoughtSignature" in function_call
        assert user_turn["parts"] == [
            {"functionResponse": {"id": call.id, "name": "get_weather", "response": {"output": "21 C, sunny"}}}
        ]
    assert (await usage_of(gateway, provider))["requests"] == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        {"thinking": {"type": "enabled", "budget_tokens": 2000}},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
                    ],
                }
            ]
        },
    ],
    ids=["structured_output", "thinking", "document"],
)
async def test_a_request_the_fallback_cannot_express_is_not_sent_and_the_original_error_returns(
    gateway: Gateway, anthropic_api: AnthropicStandIn, fallback: ScriptedApi, provider: str, extra: dict[str, Any]
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(**extra), headers=headers)
    assert resp.status == 529
    assert (await resp.json())["error"]["type"] == "overloaded_error"
    assert resp.headers["ally-ai-provider"] == "anthropic" and resp.headers["ally-ai-model"] == PRIMARY
    assert fallback.calls == []


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_the_fallbacks_own_failures_come_back_as_anthropic_errors(
    gateway: Gateway,
    anthropic_api: AnthropicStandIn,
    fallback: ScriptedApi,
    provider: str,
    status: int,
    streaming: bool,
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    module: Any = openai_api_module if provider == "openai" else gemini_api_module
    fallback.plan(MODELS[provider], module.error(status, "busy upstream"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=streaming), headers=headers)
    assert resp.status == status
    body = await resp.json()
    kinds = {429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
    assert body["type"] == "error" and body["error"]["type"] == kinds[status]
    assert resp.headers["ally-ai-provider"] == provider
    assert len(fallback.calls) == 2  # ALLY_AI_ATTEMPTS: the fallback was retried too


async def test_a_fallbacks_refusal_returns_the_original_error(
    gateway: Gateway, anthropic_api: AnthropicStandIn, fallback: ScriptedApi, provider: str
):
    """A 400 from a translated request is not the caller's fault: it sees Anthropic's 529."""
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    module: Any = openai_api_module if provider == "openai" else gemini_api_module
    fallback.plan(MODELS[provider], module.error(400, "max_tokens is too large"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 529 and (await resp.json())["error"]["type"] == "overloaded_error"
    assert len(fallback.calls) == 1


async def test_a_fallback_stream_that_breaks_after_it_began_ends_with_an_error_event(
    gateway: Gateway, anthropic_api: AnthropicStandIn, fallback: ScriptedApi, provider: str
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    module: Any = openai_api_module if provider == "openai" else gemini_api_module
    fallback.plan(MODELS[provider], module.stream(("one", "two", "three"), fail_after=2))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    assert resp.status == 200 and resp.headers["ally-ai-provider"] == provider
    body = await resp.read()
    assert b"event: message_start" in body and b"event: message_stop" not in body
    assert body.endswith(b"\n\n") and body.rsplit(b"event: ", 1)[1].startswith(b"error\n")
    assert (await usage_of(gateway, provider))["requests"] == 1
