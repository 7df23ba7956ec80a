"""OpenAI (Chat Completions) through the official SDK (`openai.AsyncOpenAI`), as a fallback.

Any OpenAI-compatible endpoint works through `ALLY_OPENAI_BASE_URL`. The request
is translated from the Messages API and the answer back (`translate/openai_chat.py`);
a request with no equivalent raises `Untranslatable` before anything is sent. The
SDK's retries are off (the chain retries); it sends no telemetry. Its client is
asynchronous, so nothing here blocks the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai
import orjson

from ai.errors import ModelCallFailed, StreamBroken
from ai.foreign import TranslatedReply, status_error
from ai.request import MessagesRequest
from ai.translate import openai_chat
from foundation.tls import client_context

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None, timeout: float) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            http_client=openai.DefaultAsyncHttpxClient(verify=client_context(), trust_env=False),
        )

    async def open(self, model: str, request: MessagesRequest) -> TranslatedReply:
        params = openai_chat.request(request, model)
        try:
            answer: Any = await self._client.chat.completions.create(**params)
        except openai.APIStatusError as exc:
            raise _status_error(exc) from None
        except openai.APITimeoutError:
            raise ModelCallFailed("timeout", retryable=True) from None
        except openai.APIConnectionError:
            raise ModelCallFailed("connection", retryable=True) from None
        if not request.stream:
            body = openai_chat.answer(answer.model_dump(mode="json"), model)
            return TranslatedReply(body=orjson.dumps(body))
        return TranslatedReply(events=_events(answer, model), close=answer.close)

    async def aclose(self) -> None:
        await self._client.close()


async def _events(stream: openai.AsyncStream[Any], model: str) -> AsyncGenerator[bytes, None]:
    translator = openai_chat.StreamTranslator(model)
    try:
        async for chunk in stream:
            yield translator.feed(chunk.model_dump(mode="json"))
    except (openai.APITimeoutError, httpx2.TimeoutException):
        raise StreamBroken("timeout") from None
    except (openai.APIError, httpx2.HTTPError):
        raise StreamBroken("broken") from None
    if not translator.finished:
        raise StreamBroken("broken")
    yield translator.end()


def _status_error(exc: openai.APIStatusError) -> ModelCallFailed:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    message = str(error.get("message") or exc.message) if isinstance(error, dict) else exc.message
    return status_error("openai", exc.status_code, message, exc.response.headers)
