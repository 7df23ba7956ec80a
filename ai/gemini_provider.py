"""Google AI (the Gemini API) through the official `google-genai` SDK, as a fallback.

`generateContent`, and `streamGenerateContent?alt=sse` for streams, on the
Gemini API (never Vertex AI, whatever the environment says). The request is
translated from the Messages API and the answer back (`translate/gemini.py`); a
request with no equivalent raises `Untranslatable` before anything is sent. The
SDK's retries are off, including its implicit retry of connection errors (the
chain retries); it runs on its asynchronous client over our own `httpx2` client,
so nothing here blocks the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx2
import orjson
from google import genai
from google.genai import errors, types

from ai.errors import ModelCallFailed, StreamBroken
from ai.foreign import TranslatedReply, status_error
from ai.request import MessagesRequest
from ai.translate import gemini
from foundation.tls import client_context

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiProvider:
    name = "google"

    def __init__(self, *, api_key: str, base_url: str | None, timeout: float) -> None:
        self._http = httpx2.AsyncClient(
            verify=client_context(), trust_env=False, timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0))
        )
        self._client = genai.Client(
            vertexai=False,
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url or DEFAULT_BASE_URL,
                timeout=int(timeout * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
                httpx_async_client=self._http,
            ),
        )

    async def open(self, model: str, request: MessagesRequest) -> TranslatedReply:
        params = gemini.request(request, model)
        models = self._client.aio.models
        try:
            if not request.stream:
                response = await models.generate_content(**params)
                body = gemini.answer(_dump(response), model)
                return TranslatedReply(body=orjson.dumps(body))
            # The SDK sends a stream's request when it is first read: read its first chunk here,
            # so that a refusal is a failure before the first byte, as for the other providers.
            stream = aiter(await models.generate_content_stream(**params))
            first = await anext(stream)
        except errors.APIError as exc:
            raise _status_error(exc) from None
        except httpx2.TimeoutException:
            raise ModelCallFailed("timeout", retryable=True) from None
        except (httpx2.HTTPError, StopAsyncIteration):
            raise ModelCallFailed("connection", retryable=True) from None
        return TranslatedReply(events=_events(first, stream, model), close=_closer(stream))

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


def _dump(response: types.GenerateContentResponse) -> dict[str, Any]:
    return response.model_dump(mode="json", exclude_none=True)


async def _events(
    first: types.GenerateContentResponse, rest: AsyncIterator[types.GenerateContentResponse], model: str
) -> AsyncGenerator[bytes, None]:
    translator = gemini.StreamTranslator(model)
    yield translator.feed(_dump(first))
    try:
        async for chunk in rest:
            yield translator.feed(_dump(chunk))
    except httpx2.TimeoutException:
        raise StreamBroken("timeout") from None
    except (errors.APIError, httpx2.HTTPError):
        raise StreamBroken("broken") from None
    if not translator.finished:
        raise StreamBroken("broken")
    yield translator.end()


def _closer(stream: AsyncIterator[types.GenerateContentResponse]) -> Any:
    async def close() -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()

    return close


def _status_error(exc: errors.APIError) -> ModelCallFailed:
    headers = exc.response.headers if isinstance(exc.response, httpx2.Response) else {}
    return status_error("google", exc.code, str(exc.message or exc.status or "error"), headers)
