"""The OpenAI and Gemini stand-ins, read by the official SDKs: what they send is what the SDKs expect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from google import genai
from google.genai import errors, types

from tests.support import gemini as gemini_module
from tests.support import openai as openai_module
from tests.support.gemini import GeminiStandIn
from tests.support.openai import OpenAIStandIn

HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def openai_sdk(openai_api: OpenAIStandIn) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=openai_module.API_KEY, base_url=openai_api.base_url, max_retries=0)


@pytest.fixture
async def gemini_sdk(gemini_api: GeminiStandIn) -> AsyncIterator[genai.Client]:
    # On httpx, as the gateway runs it: the SDK's aiohttp session subclass warns on creation.
    async with httpx2.AsyncClient() as http:
        options = types.HttpOptions(
            base_url=gemini_api.url, retry_options=types.HttpRetryOptions(attempts=1), httpx_async_client=http
        )
        yield genai.Client(api_key=gemini_module.API_KEY, http_options=options)


async def test_openai_answers_streams_with_tool_calls_and_errors(
    openai_api: OpenAIStandIn, openai_sdk: openai.AsyncOpenAI
):
    calls = (("get_weather", {"city": "Paris"}),)
    openai_api.plan(
        "gpt-x",
        openai_module.completion("Hello"),
        openai_module.stream(("Hel", "lo"), tool_calls=calls),
        openai_module.error(429, "Rate limit reached", retry_after=1),
        openai_module.error(503, "The engine is currently overloaded"),
    )
    whole = await openai_sdk.chat.completions.create(model="gpt-x", messages=HI)
    assert whole.choices[0].message.content == "Hello" and whole.usage is not None
    async with openai_sdk.chat.completions.stream(
        model="gpt-x",
        messages=HI,
        stream_options={"include_usage": True},
    ) as streamed:
        final = await streamed.get_final_completion()
    said = final.choices[0].message
    assert said.content == "Hello" and final.choices[0].finish_reason == "tool_calls"
    call: Any = said.tool_calls[0] if said.tool_calls else None
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    assert final.usage is not None and final.usage.prompt_tokens == 21
    with pytest.raises(openai.RateLimitError) as limited:
        await openai_sdk.chat.completions.create(model="gpt-x", messages=HI)
    assert limited.value.code == "rate_limit_exceeded" and limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError) as overloaded:
        await openai_sdk.chat.completions.create(model="gpt-x", messages=HI)
    assert overloaded.value.status_code == 503 and overloaded.value.type == "server_error"
    await openai_sdk.close()


async def test_gemini_answers_streams_with_function_calls_and_errors(
    gemini_api: GeminiStandIn, gemini_sdk: genai.Client
):
    calls = (("get_weather", {"city": "Paris"}),)
    gemini_api.plan(
        "gemini-x",
        gemini_module.answer("Hello"),
        gemini_module.stream(("Hel", "lo"), function_calls=calls),
        gemini_module.error(429),
        gemini_module.error(500),
    )
    models = gemini_sdk.aio.models
    whole = await models.generate_content(model="gemini-x", contents="hi")
    assert whole.text == "Hello" and whole.usage_metadata and whole.usage_metadata.prompt_token_count == 13
    chunks = [c async for c in await models.generate_content_stream(model="gemini-x", contents="hi")]
    assert "".join(c.text or "" for c in chunks) == "Hello"
    function_calls = [fc for c in chunks for fc in c.function_calls or ()]
    assert [(fc.name, fc.args) for fc in function_calls] == [("get_weather", {"city": "Paris"})]
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert gemini_api.calls[-1].path.endswith(":streamGenerateContent?alt=sse")
    for status, kind in ((429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")):
        with pytest.raises(errors.APIError) as failed:
            await models.generate_content(model="gemini-x", contents="hi")
        assert failed.value.code == status and failed.value.status == kind
