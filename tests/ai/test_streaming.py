from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from foundation.config import Settings
from tests.support.anthropic import AnthropicStandIn, message, stream
from tests.support.gateway import Gateway
from tests.support.relay import FALLBACK, PRIMARY, ask, server_token


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ai_timeout=1.0)


def events_of(body: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


@pytest.mark.parametrize("failure", ["break", "stall", "end"])
async def test_failure_after_the_stream_began_ends_with_an_error_event(
    gateway: Gateway, anthropic_api: AnthropicStandIn, failure: str
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(("Hello", " wor", "ld"), fail_after=4, failure=failure))
    anthropic_api.plan(FALLBACK, stream(("never",)))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    assert resp.status == 200
    body = await resp.read()
    # What the model sent arrives unchanged; then the failure is explicit, never a clean end.
    assert body.startswith(b"".join(anthropic_api.sent))
    names = [name for name, _ in events_of(body)]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "error"]
    error = events_of(body)[-1][1]
    assert error == {"type": "error", "error": {"type": "api_error", "message": error["error"]["message"]}}  # type: ignore[index]
    assert b"event: message_stop" not in body
    assert anthropic_api.calls_for(FALLBACK) == []


async def test_an_error_event_from_the_model_mid_stream_is_passed_on_as_is(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(("Hello",), fail_after=4, failure="error"))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    body = await resp.read()
    assert body == b"".join(anthropic_api.sent)
    assert [name for name, _ in events_of(body)][-1] == "error"
    assert events_of(body)[-1][1]["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert body.count(b"event: error") == 1


async def test_a_caller_that_goes_away_mid_stream_still_has_its_usage_metered(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    gate = asyncio.Event()
    anthropic_api.plan(PRIMARY, stream(("a",) * 50, gate=gate, gate_before=1))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
    resp.close()
    gate.set()

    async def metered() -> dict[str, str]:
        redis, keys = gateway.services.redis, gateway.services.keys
        while True:
            found = [k async for k in redis.scan_iter(match=keys.user_key("alice", "ai:usage:*"))]
            if found:
                return {k.decode(): v.decode() for k, v in (await redis.hgetall(found[0])).items()}
            await asyncio.sleep(0.05)

    usage = await asyncio.wait_for(metered(), timeout=5)
    assert usage[f"input:{PRIMARY}"] == "25" and usage[f"requests:{PRIMARY}"] == "1"
    assert usage[f"provider:{PRIMARY}"] == "anthropic"


async def test_a_slow_stream_does_not_hold_up_another_users_request(gateway: Gateway, anthropic_api: AnthropicStandIn):
    alice = await server_token(gateway, "alice")
    bob = await server_token(gateway, "bob")
    gate = asyncio.Event()
    anthropic_api.plan(PRIMARY, stream(("slow",), gate=gate, gate_before=1), message("quick"))
    slow = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=alice)
    await asyncio.wait_for(slow.content.readuntil(b"\n\n"), timeout=5)
    quick = await asyncio.wait_for(gateway.client.post("/v1/ai/messages", json=ask(), headers=bob), timeout=5)
    assert quick.status == 200 and b"quick" in await quick.read()
    assert not gate.is_set()
    gate.set()
    assert (await slow.read()).endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
