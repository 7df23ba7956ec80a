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
from tests.support.telegram import FakeTelegram


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def anthropic_api() -> AsyncIterator[AnthropicStandIn]:
    api = AnthropicStandIn()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


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
