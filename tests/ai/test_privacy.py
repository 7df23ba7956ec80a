"""Nothing of a prompt or an answer is written to Redis, to disk or to a log."""

from __future__ import annotations

import dataclasses
import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from foundation import logs
from foundation.config import Settings
from tests.support import gemini as gemini_module
from tests.support import openai as openai_module
from tests.support.anthropic import AnthropicStandIn, error, message, stream
from tests.support.gateway import REDIS_URL, Gateway
from tests.support.gemini import GeminiStandIn
from tests.support.openai import OpenAIStandIn
from tests.support.relay import FALLBACK, PRIMARY, ask, server_token


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The gateway's JSON log lines, at the most talkative level it has."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    logs.configure("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


async def everything_in_redis(prefix: str) -> list[bytes]:
    """Every key under the test's prefix and every value in it, whatever its type."""
    redis = Redis.from_url(REDIS_URL)
    found: list[bytes] = []
    try:
        async for key in redis.scan_iter(match=f"{prefix}*"):
            found.append(key)
            kind = (await redis.type(key)).decode()
            if kind == "string":
                found.append(await redis.get(key))
            elif kind == "hash":
                for field, value in (await redis.hgetall(key)).items():
                    found += [field, value]
            elif kind == "list":
                found += await redis.lrange(key, 0, -1)
            elif kind == "set":
                found += list(await redis.smembers(key))
            elif kind == "zset":
                found += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _id, fields in await redis.xrange(key):
                    for field, value in fields.items():
                        found += [field, value]
            else:
                raise AssertionError(f"unexpected Redis type {kind}")
    finally:
        await redis.aclose()
    return found


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_a_marker_in_prompts_and_answers_is_found_nowhere(
    gateway: Gateway, anthropic_api: AnthropicStandIn, log_output: io.StringIO, tmp_path: Path
):
    marker = f"MARKER{uuid.uuid4().hex}"
    headers = await server_token(gateway)
    anthropic_api.plan(
        PRIMARY,
        message(f"answer {marker}"),
        error(529, "Overloaded"),
        error(529, "Overloaded"),
        stream((marker,), fail_after=4, failure="break"),
        error(400, f"bad {marker}"),
    )
    anthropic_api.plan(FALLBACK, stream(("a", marker)))
    prompt = ask(f"secret {marker}", system=f"system {marker}", metadata={"user_id": marker})
    assert (await gateway.client.post("/v1/ai/messages", json=prompt, headers=headers)).status == 200
    for expected in (200, 200, 400):
        prompt["stream"] = expected == 200
        resp = await gateway.client.post("/v1/ai/messages", json=prompt, headers=headers)
        assert resp.status == expected
        assert marker.encode() in await resp.read()
    bad = await gateway.client.post(
        "/v1/ai/messages", json={"model": marker, "messages": marker, "max_tokens": 1}, headers=headers
    )
    assert bad.status == 400 and marker not in await bad.text()
    assert sum(marker in str(c.body) for c in anthropic_api.calls) == 6  # the marker did travel to the model

    stored = await everything_in_redis(gateway.settings.key_prefix)
    assert any(b"ai:usage" in item for item in stored)  # the metering did write
    assert not [item for item in stored if marker.encode() in item]
    logged = log_output.getvalue()
    assert "AI request served" in logged and "falling back" in logged
    assert marker not in logged
    assert not files_holding(tmp_path, marker.encode())


class TestFallbackProviders:
    @pytest.fixture
    def settings(self, settings: Settings, openai_api: OpenAIStandIn, gemini_api: GeminiStandIn) -> Settings:
        return dataclasses.replace(
            settings,
            ai_fallbacks=("openai:gpt-test-5", "google:gemini-test-3"),
            openai_api_key=openai_module.API_KEY,
            openai_base_url=openai_api.base_url,
            gemini_api_key=gemini_module.API_KEY,
            gemini_base_url=gemini_api.url,
        )

    async def test_a_marker_served_by_openai_and_gemini_is_found_nowhere(
        self,
        gateway: Gateway,
        anthropic_api: AnthropicStandIn,
        openai_api: OpenAIStandIn,
        gemini_api: GeminiStandIn,
        log_output: io.StringIO,
        tmp_path: Path,
    ):
        marker = f"MARKER{uuid.uuid4().hex}"
        headers = await server_token(gateway)
        anthropic_api.plan(PRIMARY, error(529, "Overloaded"))
        calls = (("lookup", {"q": marker}),)
        openai_api.plan(
            "gpt-test-5",
            openai_module.completion(f"answer {marker}"),
            openai_module.stream((marker,), tool_calls=calls),
            openai_module.error(500, f"failed on {marker}"),
        )
        gemini_api.plan(
            "gemini-test-3",
            gemini_module.answer(f"gemini {marker}", function_calls=calls),
            gemini_module.stream(("x", marker)),
        )
        prompt = ask(f"secret {marker}", system=f"system {marker}")
        for streaming in (False, True, False, True):
            prompt["stream"] = streaming
            resp = await gateway.client.post("/v1/ai/messages", json=prompt, headers=headers)
            assert resp.status == 200
            assert marker.encode() in await resp.read()
        # Two answers from OpenAI, then its 500s (retried) hand the last two to Gemini.
        assert len(openai_api.calls) == 6 and len(gemini_api.calls) == 2

        stored = await everything_in_redis(gateway.settings.key_prefix)
        assert any(b"provider:gpt-test-5" in item for item in stored)
        assert not [item for item in stored if marker.encode() in item]
        logged = log_output.getvalue()
        assert '"provider": "google"' in logged or '"provider":"google"' in logged
        assert marker not in logged
        assert not files_holding(tmp_path, marker.encode())
