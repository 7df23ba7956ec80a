from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from ai.metering import StreamCounter, Tokens, month_of
from ai.sse import SseEvent
from foundation.config import Settings
from tests.support.anthropic import AnthropicStandIn, error, message, stream
from tests.support.gateway import ADMIN_TOKEN, Gateway
from tests.support.relay import FALLBACK, PRIMARY, ask, server_token


def served(input_tokens: int, output_tokens: int, requests: int) -> dict[str, object]:
    return {"provider": "anthropic", "input_tokens": input_tokens, "output_tokens": output_tokens, "requests": requests}


async def usage(gateway: Gateway, headers: dict[str, str]) -> dict[str, Any]:
    resp = await gateway.client.get("/v1/ai/usage", headers=headers)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_whole_answers_are_metered_from_their_usage(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message(input_tokens=10, output_tokens=7, cache_read=5))
    for _ in range(2):
        assert (await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)).status == 200
    body = await usage(gateway, headers)
    assert body["month"] == month_of(time.time())
    # Cache reads are input the provider bills.
    assert body["models"] == {PRIMARY: served(30, 14, 2)}
    assert body["total_tokens"] == 44
    assert body["cap"] is None and body["remaining"] is None
    assert body["resets_at"].endswith("-01T00:00:00.000Z")


async def test_streams_are_metered_from_message_start_and_message_delta(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(input_tokens=25, output_tokens=15))
    resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
    await resp.read()
    # message_start says 25 in, 1 out; message_delta's cumulative 15 out replaces the 1.
    body = await usage(gateway, headers)
    assert body["models"] == {PRIMARY: served(25, 15, 1)}
    assert body["total_tokens"] == 40


async def test_a_broken_stream_is_metered_for_what_it_used(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, stream(input_tokens=25, output_tokens=15, fail_after=4, failure="break"))
    await (await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)).read()
    assert (await usage(gateway, headers))["models"][PRIMARY] == {
        "provider": "anthropic",
        "input_tokens": 25,
        "output_tokens": 1,
        "requests": 1,
    }


async def test_usage_is_counted_for_the_model_that_served(gateway: Gateway, anthropic_api: AnthropicStandIn):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
    anthropic_api.plan(FALLBACK, message(input_tokens=3, output_tokens=4))
    await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
    assert (await usage(gateway, headers))["models"] == {FALLBACK: served(3, 4, 1)}


async def test_users_are_metered_apart_and_shown_in_admin_status_and_export(
    gateway: Gateway, anthropic_api: AnthropicStandIn
):
    alice = await server_token(gateway, "alice")
    bob = await server_token(gateway, "bob")
    anthropic_api.plan(PRIMARY, message(input_tokens=10, output_tokens=5))
    await gateway.client.post("/v1/ai/messages", json=ask(), headers=alice)
    assert (await usage(gateway, bob))["models"] == {}
    status = await (await gateway.admin("GET", "/admin/v1/users/alice")).json()
    assert status["ai"]["models"][PRIMARY]["input_tokens"] == 10 and status["ai"]["total_tokens"] == 15
    export = await (await gateway.admin("GET", "/admin/v1/users/alice/export")).json()
    assert export["ai"]["months"] == [
        {
            "month": month_of(time.time()),
            "total_tokens": 15,
            "models": {PRIMARY: served(10, 5, 1)},
            "providers": {"anthropic": {"input_tokens": 10, "output_tokens": 5, "requests": 1}},
        }
    ]
    keys = [k async for k in gateway.services.redis.scan_iter(match=f"{gateway.settings.key_prefix}*ai:usage:*")]
    assert keys and all(b"{u:alice}" in k for k in keys)


class TestCap:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, ai_monthly_tokens=40)

    async def test_the_cap_answers_402_once_reached_without_calling_the_model(
        self, gateway: Gateway, anthropic_api: AnthropicStandIn
    ):
        headers = await server_token(gateway)
        anthropic_api.plan(PRIMARY, stream(input_tokens=25, output_tokens=10))
        resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
        assert resp.status == 200
        await resp.read()
        assert (await usage(gateway, headers))["remaining"] == 5
        # Below the cap: the next request goes through, even though it takes the total past it.
        resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=headers)
        assert resp.status == 200
        await resp.read()
        calls = len(anthropic_api.calls)
        resp = await gateway.client.post("/v1/ai/messages", json=ask(), headers=headers)
        assert resp.status == 402
        body = await resp.json()
        assert body["error"] == "ai_quota_exceeded" and body["cap"] == 40 and body["used"] == 70
        assert body["resets_at"].endswith("-01T00:00:00.000Z")
        assert len(anthropic_api.calls) == calls
        assert (await usage(gateway, headers)) | {"models": None, "providers": None} == {
            "month": month_of(time.time()),
            "total_tokens": 70,
            "models": None,
            "providers": None,
            "cap": 40,
            "remaining": 0,
            "resets_at": body["resets_at"],
        }

    async def test_the_cap_is_per_user(self, gateway: Gateway, anthropic_api: AnthropicStandIn):
        alice = await server_token(gateway, "alice")
        bob = await server_token(gateway, "bob")
        anthropic_api.plan(PRIMARY, message(input_tokens=30, output_tokens=20))
        assert (await gateway.client.post("/v1/ai/messages", json=ask(), headers=alice)).status == 200
        assert (await gateway.client.post("/v1/ai/messages", json=ask(), headers=alice)).status == 402
        assert (await gateway.client.post("/v1/ai/messages", json=ask(), headers=bob)).status == 200


async def test_usage_needs_the_server_token(gateway: Gateway):
    assert (await gateway.client.get("/v1/ai/usage")).status == 401
    resp = await gateway.client.get("/v1/ai/usage", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 401


def test_later_cumulative_counts_replace_earlier_ones():
    counter = StreamCounter()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}
    counter.see(SseEvent(b"", "message_start", json.dumps(start).encode()))
    for output, extra in ((5, {}), (9, {"input_tokens": 12, "cache_read_input_tokens": 4})):
        delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": output, **extra}}
        counter.see(SseEvent(b"", "message_delta", json.dumps(delta).encode()))
    assert counter.tokens == Tokens(input=16, output=9)
    counter.see(SseEvent(b"", "message_delta", b"{not json"))
    assert counter.tokens == Tokens(input=16, output=9) and not counter.stopped
    counter.see(SseEvent(b"", "message_stop", b'{"type": "message_stop"}'))
    assert counter.stopped
