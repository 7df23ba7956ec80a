"""One fixture per provider stand-in, registered for the whole suite by tests/conftest.py.

Each stand-in is a small local HTTP server speaking the provider's wire format; a test
asks for it by name (`fake_tg`, `anthropic_api`, `openai_api`, `gemini_api`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.anthropic import AnthropicStandIn
from tests.support.gemini import GeminiStandIn
from tests.support.openai import OpenAIStandIn
from tests.support.running import running
from tests.support.telegram import FakeTelegram


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    async with running(FakeTelegram()) as server:
        yield server


@pytest.fixture
async def anthropic_api() -> AsyncIterator[AnthropicStandIn]:
    async with running(AnthropicStandIn()) as api:
        yield api


@pytest.fixture
async def openai_api() -> AsyncIterator[OpenAIStandIn]:
    async with running(OpenAIStandIn()) as api:
        yield api


@pytest.fixture
async def gemini_api() -> AsyncIterator[GeminiStandIn]:
    async with running(GeminiStandIn()) as api:
        yield api
