from __future__ import annotations

import asyncio
import json

from tests.support.anthropic import AnthropicStandIn, message, stream
from tests.support.gateway import Gateway
from tests.support.relay import FALLBACK, PRIMARY, ask, server_token

MODEL_HEADER = "ally-ai-model"


async def test_whole_answer_is_the_providers_json_byte_for_byte(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message("Hi! My name is Claude.", input_tokens=10, output_tokens=7))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert resp.status == 200
    assert resp.headers[MODEL_HEADER] == PRIMARY
    assert resp.headers.getall("Content-Type") == ["application/json"]
    assert resp.headers["request-id"].startswith("req_")
    assert await resp.read() == anthropic_api.sent[-1]
    call = anthropic_api.calls[-1]
    assert call.body["messages"] == [{"role": "user", "content": "Hello, Claude"}]
    assert call.body["max_tokens"] == 1024 and call.body["model"] == PRIMARY
    assert call.headers["anthropic-version"]


async def test_stream_is_passed_through_byte_for_byte(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(("Hello", " there", "!")))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    assert resp.status == 200
    assert resp.headers[MODEL_HEADER] == PRIMARY
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    received = await resp.read()
    assert received == b"".join(anthropic_api.sent)
    names = [line[7:] for line in received.decode().splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"


async def test_stream_reaches_the_caller_while_the_model_is_still_writing(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    gate = asyncio.Event()
    anthropic_api.plan(PRIMARY, stream(("Hello",), gate=gate, gate_before=1))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
    assert first.startswith(b"event: message_start\n")
    assert not any(b"message_stop" in chunk for chunk in anthropic_api.sent)
    gate.set()
    rest = await resp.read()
    assert first + rest == b"".join(anthropic_api.sent)
    assert rest.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert json.loads(first.split(b"data: ", 1)[1])["message"]["model"] == PRIMARY
    assert FALLBACK not in [c.model for c in anthropic_api.calls]
