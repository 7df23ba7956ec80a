from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import Gateway, make_settings, random_public_key
from tests.support.anthropic import API_KEY, AnthropicStandIn
from tests.support.gemini import GeminiStandIn
from tests.support.openai import OpenAIStandIn

PRIMARY = "claude-sonnet-5-5"
FALLBACK = "claude-haiku-5-5"


@pytest.fixture
async def anthropic_api() -> AsyncIterator[AnthropicStandIn]:
    api = AnthropicStandIn()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def settings(tmp_path: Path, anthropic_api: AnthropicStandIn) -> Settings:
    return make_settings(
        tmp_path,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic_api.url,
        ai_fallbacks=(FALLBACK,),
        ai_attempts=2,
        ai_backoff=0.0,
        ai_timeout=5.0,
    )


async def server_token(gateway: Gateway, user_id: str = "alice") -> dict[str, str]:
    resp = await gateway.admin(
        "PUT",
        f"/admin/v1/users/{user_id}",
        json={"server_url": "http://127.0.0.1:9/ally", "server_public_key": random_public_key()},
    )
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['server_token']}"}


def ask(
    text: str = "Hello, Claude", *, model: str = PRIMARY, stream: bool = False, **extra: object
) -> dict[str, object]:
    return {
        "model": model,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **extra,
    }


@pytest.fixture
async def openai_api() -> AsyncIterator[OpenAIStandIn]:
    api = OpenAIStandIn()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def gemini_api() -> AsyncIterator[GeminiStandIn]:
    api = GeminiStandIn()
    await api.start()
    try:
        yield api
    finally:
        await api.close()
