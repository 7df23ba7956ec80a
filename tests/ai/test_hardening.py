"""The relay runs on the gateway's key: a tenant gets the Messages API, not the account behind it."""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from typing import Any

import pytest
from anthropic.types.message_create_params import MessageCreateParamsBase
from redis.asyncio import Redis

from ai import admission as admission_module
from ai import request as request_module
from ai.admission import Admission
from ai.metering import Meter
from foundation.config import Settings
from foundation.errors import TooManyRequests
from foundation.redis_keys import Keys
from tests.support.anthropic import AnthropicStandIn, message, stream
from tests.support.gateway import REDIS_URL, Gateway
from tests.support.relay import PRIMARY, ask, server_token

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
MCP = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]
SERVER_TOOLS = [
    WEB_SEARCH,
    {"type": "web_fetch_20250910", "name": "web_fetch"},
    {"type": "code_execution_20250825", "name": "code_execution"},
    {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "mcp_toolset", "mcp_server_name": "example"},
]


@pytest.mark.parametrize(
    ("body", "beta"),
    [
        *[(ask(tools=[tool]), None) for tool in SERVER_TOOLS],
        (ask(mcp_servers=MCP), "mcp-client-2025-04-04"),
        (ask(mcp_servers=MCP), None),
        (ask(container="container_011CPR5CNjB747bTd36fQLFk"), None),
        (ask(container={"skills": [{"type": "anthropic", "skill_id": "pptx"}]}), None),
        (ask(some_new_field={"x": 1}), None),
        (ask(workspace_id="wrkspc_011CZkZaBF1tNoB5wlCeusgy"), None),
        (ask(user_profile_id="prof_other"), None),
        (ask(metadata={"user_id": "u", "tenant": "other"}), None),
        ({**ask(), "messages": [{"role": "user", "content": "hi", "cache": True}]}, None),
        (ask(messages=None) | {"messages": [{"role": "assistant", "content": [{"type": "server_tool_use"}]}]}, None),
        (ask(), "files-api-2025-04-14"),
        (ask(), "context-1m-2025-08-07, computer-use-2025-01-24"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
async def test_server_side_features_and_unknown_fields_are_400_and_reach_no_model(
    gateway: Gateway, anthropic_api: AnthropicStandIn, body: dict[str, Any], beta: str | None
):
    headers = await server_token(gateway)
    anthropic_api.plan(PRIMARY, message())
    extra = {"anthropic-beta": beta} if beta else {}
    resp = await gateway.client.post("/v1/ai/messages", json=body, headers={**headers, **extra})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    assert anthropic_api.calls == []


def test_the_relayed_fields_are_the_sdks_less_the_account_ones():
    """An SDK upgrade that adds a request field fails here, so that someone decides about it."""
    sdk = set(typing.get_type_hints(MessageCreateParamsBase)) | {"stream"}
    relayed = set(request_module._OPTIONAL) | set(request_module._REQUIRED)
    sampling = {"temperature", "top_p", "top_k"}
    assert relayed - sampling - {"mcp_servers"} == sdk - set(request_module.ACCOUNT_FIELDS)


class TestAllowedByConfiguration:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, ai_allowed_server_tools=("web_search", "mcp_servers"), ai_allowed_betas=("mcp-client-2025-04-04",)
        )

    async def test_what_the_operator_lists_is_forwarded_and_nothing_else(
        self, gateway: Gateway, anthropic_api: AnthropicStandIn
    ):
        headers = await server_token(gateway)
        anthropic_api.plan(PRIMARY, message())
        body = ask(tools=[WEB_SEARCH], mcp_servers=MCP)
        resp = await gateway.client.post(
            "/v1/ai/messages", json=body, headers={**headers, "anthropic-beta": "mcp-client-2025-04-04"}
        )
        assert resp.status == 200
        call = anthropic_api.calls[-1]
        assert call.body["tools"] == [WEB_SEARCH] and call.body["mcp_servers"] == MCP
        assert call.headers["anthropic-beta"] == "mcp-client-2025-04-04"
        for refused in (ask(tools=[SERVER_TOOLS[2]]), ask(container="c")):
            assert (await gateway.client.post("/v1/ai/messages", json=refused, headers=headers)).status == 400
        assert len(anthropic_api.calls) == 1


async def parallel(gateway: Gateway, headers: dict[str, str], count: int, **extra: Any) -> list[Any]:
    return list(
        await asyncio.gather(
            *(
                gateway.client.post("/v1/ai/messages", json=ask(stream=True, **extra), headers=headers)
                for _ in range(count)
            )
        )
    )


class TestConcurrency:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, ai_concurrency=4)

    async def test_twenty_parallel_requests_get_four_slots_and_429_with_retry_after(
        self, gateway: Gateway, anthropic_api: AnthropicStandIn
    ):
        headers = await server_token(gateway)
        gate = asyncio.Event()
        anthropic_api.plan(PRIMARY, stream(("held",), gate=gate))
        answers = await parallel(gateway, headers, 20)
        busy = [r for r in answers if r.status == 429]
        served = [r for r in answers if r.status == 200]
        assert len(served) == 4 and len(busy) == 16
        assert len(anthropic_api.calls) == 4
        for resp in busy:
            assert (await resp.json())["error"] == "ai_busy" and int(resp.headers["Retry-After"]) >= 1
        gate.set()
        for resp in served:
            assert (await resp.read()).endswith(b'data: {"type": "message_stop"}\n\n')
        # The slots came back with the answers.
        again = await parallel(gateway, headers, 4)
        assert [r.status for r in again] == [200] * 4

    async def test_another_users_requests_do_not_count(self, gateway: Gateway, anthropic_api: AnthropicStandIn):
        alice = await server_token(gateway, "alice")
        bob = await server_token(gateway, "bob")
        gate = asyncio.Event()
        anthropic_api.plan(PRIMARY, stream(("held",), gate=gate))
        held = await parallel(gateway, alice, 4)
        resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True), headers=bob)
        assert resp.status == 200
        gate.set()
        for r in [*held, resp]:
            await r.read()


@pytest.fixture
async def two_processes(settings: Settings) -> Any:
    """Two admission objects on their own Redis connections, as two gateway processes have."""
    clients = [Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)]
    keys = Keys(settings.key_prefix)
    yield [Admission(c, keys, Meter(c, keys, None), concurrency=4) for c in clients]
    for client in clients:
        await client.aclose()


async def test_the_limit_holds_across_processes_and_a_dead_processs_slots_lapse(
    two_processes: list[Admission], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(admission_module, "LEASE", 0.5)
    first, second = two_processes
    slots = [await first.enter("alice") for _ in range(4)]
    with pytest.raises(TooManyRequests):
        await second.enter("alice")
    # The first process dies: its slots are neither renewed nor released.
    for slot in slots:
        assert slot._renewer is not None
        slot._renewer.cancel()

    async def enters() -> None:
        while True:
            try:
                await (await second.enter("alice")).release()
                return
            except TooManyRequests:
                await asyncio.sleep(0.05)

    await asyncio.wait_for(enters(), timeout=5)


class TestCapByReservation:
    CAP = 1000
    MAX_TOKENS = 300

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, ai_monthly_tokens=self.CAP, ai_concurrency=20)

    async def test_twenty_parallel_requests_cannot_overshoot_the_cap(
        self, gateway: Gateway, anthropic_api: AnthropicStandIn
    ):
        headers = await server_token(gateway)
        gate = asyncio.Event()
        # Each answer uses exactly what it may: 25 in, 275 out.
        anthropic_api.plan(PRIMARY, stream(("x",), input_tokens=25, output_tokens=275, gate=gate))
        answers = await parallel(gateway, headers, 20, max_tokens=self.MAX_TOKENS)
        served = [r for r in answers if r.status == 200]
        refused = [r for r in answers if r.status != 200]
        assert {r.status for r in refused} == {429}
        assert len(anthropic_api.calls) == len(served) < 20
        gate.set()
        for resp in served:
            await resp.read()
        total = await self.total(gateway, headers)
        reservation = self.MAX_TOKENS + len(str(ask(stream=True, max_tokens=self.MAX_TOKENS))) // 4 + 16
        assert total <= self.CAP + reservation
        # Below the cap a request still goes; once it is reached, 402 and nothing sent.
        while total < self.CAP:
            resp = await gateway.client.post("/v1/ai/messages", json=ask(stream=True, max_tokens=300), headers=headers)
            assert resp.status == 200
            await resp.read()
            total = await self.total(gateway, headers)
        assert total <= self.CAP + reservation
        calls = len(anthropic_api.calls)
        resp = await gateway.client.post("/v1/ai/messages", json=ask(max_tokens=300), headers=headers)
        assert resp.status == 402 and (await resp.json())["error"] == "ai_quota_exceeded"
        assert len(anthropic_api.calls) == calls

    @staticmethod
    async def total(gateway: Gateway, headers: dict[str, str]) -> int:
        body = await (await gateway.client.get("/v1/ai/usage", headers=headers)).json()
        return int(body["total_tokens"])
