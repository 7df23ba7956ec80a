from __future__ import annotations

import dataclasses
import json

import pytest

from foundation.config import Settings
from tests.support.anthropic import AnthropicStandIn, Step, drop, error, hang, message, stream
from tests.support.gateway import Gateway
from tests.support.relay import FALLBACK, PRIMARY, ask, server_token

MODEL_HEADER = "ally-ai-model"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Short enough that the timeout cases stay quick; the stand-in answers in milliseconds.
    return dataclasses.replace(settings, ai_timeout=1.0)


TRIGGERS: dict[str, Step] = {
    "rate_limited_429": error(429, "Number of request tokens has exceeded your per-minute rate limit", retry_after=0),
    "server_error_500": error(500, "Internal server error"),
    "overloaded_529": error(529, "Overloaded"),
    "timeout": hang(),
    "connection_error": drop(),
}


def answer(streaming: bool, text: str) -> Step:
    return stream((text,)) if streaming else message(text)


def text_of(body: bytes, streaming: bool) -> str:
    if not streaming:
        return str(json.loads(body)["content"][0]["text"])
    deltas = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    return "".join(d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta")


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("trigger", list(TRIGGERS))
async def test_failure_before_the_first_byte_is_retried_then_falls_back(
    gateway: Gateway, anthropic_api: AnthropicStandIn, trigger: str, streaming: bool
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, TRIGGERS[trigger])
    anthropic_api.plan(FALLBACK, answer(streaming, "from the fallback"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=streaming), headers=headers)
    assert resp.status == 200
    assert resp.headers[MODEL_HEADER] == FALLBACK
    assert text_of(await resp.read(), streaming) == "from the fallback"
    assert len(anthropic_api.calls_for(PRIMARY)) == 2  # ALLY_AI_ATTEMPTS
    assert len(anthropic_api.calls_for(FALLBACK)) == 1
    assert anthropic_api.calls_for(FALLBACK)[0].body["model"] == FALLBACK


async def test_overloaded_error_as_a_streams_first_event_falls_back(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(fail_after=0, failure="error"))
    anthropic_api.plan(FALLBACK, stream(("served",)))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    body = await resp.read()
    assert resp.headers[MODEL_HEADER] == FALLBACK
    assert b"overloaded_error" not in body and text_of(body, True) == "served"
    assert len(anthropic_api.calls_for(PRIMARY)) == 2


async def test_a_retry_that_succeeds_stays_on_the_requested_model(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"), message("second try"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 200 and resp.headers[MODEL_HEADER] == PRIMARY
    assert text_of(await resp.read(), False) == "second try"
    assert anthropic_api.calls_for(FALLBACK) == []


async def test_a_long_retry_after_moves_on_at_once(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(429, "rate limited", retry_after=120))
    anthropic_api.plan(FALLBACK, message("fallback"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 200 and resp.headers[MODEL_HEADER] == FALLBACK
    assert len(anthropic_api.calls_for(PRIMARY)) == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("status", "message_text"),
    [
        (400, "prompt is too long: 215000 tokens > 200000 maximum"),
        (400, 'messages: roles must alternate between "user" and "assistant"'),
        (404, "model: claude-nonexistent"),
    ],
)
async def test_client_errors_are_passed_back_and_not_retried(
    gateway: Gateway, anthropic_api: AnthropicStandIn, status: int, message_text: str, streaming: bool
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(status, message_text))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=streaming), headers=headers)
    assert resp.status == status
    assert await resp.read() == anthropic_api.sent[-1]
    body = json.loads(anthropic_api.sent[-1])
    assert body["type"] == "error" and body["error"]["message"] == message_text
    assert resp.headers[MODEL_HEADER] == PRIMARY
    assert resp.headers["request-id"] == body["request_id"]
    assert len(anthropic_api.calls) == 1


async def test_an_exhausted_chain_answers_with_the_last_providers_error(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    anthropic_api.plan(FALLBACK, error(529, "Overloaded"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 529
    assert resp.headers.getall("Content-Type") == ["application/json"]
    assert (await resp.json())["error"]["type"] == "overloaded_error"
    assert resp.headers[MODEL_HEADER] == FALLBACK
    assert [c.model for c in anthropic_api.calls] == [PRIMARY, PRIMARY, FALLBACK, FALLBACK]


async def test_nothing_answering_at_all_is_a_gateway_error_not_a_hang(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, drop())
    anthropic_api.plan(FALLBACK, drop())
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 502
    assert (await resp.json())["error"] == "ai_unavailable"


async def test_a_refused_gateway_key_is_not_blamed_on_the_caller(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(401, "invalid x-api-key"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "ai_unavailable" and "x-api-key" not in json.dumps(body)
    assert len(anthropic_api.calls) == 1
