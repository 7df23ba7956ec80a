"""Anthropic through the official SDK (`anthropic.AsyncAnthropic`).

The SDK sends the request (authentication, API version, base URL) and maps error
statuses to its exceptions; the relay reads the raw answer through
`with_streaming_response`, so the caller gets the provider's bytes, not a
re-serialisation of the SDK's models. The SDK's own retries are off: the chain
retries, so that a retry can become a fallback. Its OpenTelemetry spans are off
too, whatever the environment says, because their content mode would record
prompts.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

import anthropic
import httpx2

from ai.errors import ModelCallFailed, StreamBroken
from ai.foreign import retry_after
from ai.request import MessagesRequest
from ai.sse import error_type
from foundation.tls import client_context

DEFAULT_BASE_URL = "https://api.anthropic.com"
# Headers of the provider's answer the caller may see; everything else stays here.
_PASSED_ON = ("request-id", "retry-after", "content-type")


def tls_context() -> ssl.SSLContext:
    return client_context()


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str | None, timeout: float) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            open_telemetry=False,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=tls_context(), trust_env=False),
        )

    async def open(self, model: str, request: MessagesRequest) -> AnthropicReply:
        headers = {"anthropic-beta": ",".join(request.betas)} if request.betas else None
        pending = self._client.messages.with_streaming_response.create(
            model=model,
            max_tokens=request.max_tokens,
            messages=cast(Any, request.messages),
            stream=request.stream,
            extra_body=request.options or None,
            extra_headers=headers,
        )
        try:
            response = await pending.__aenter__()
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from None
        except anthropic.APITimeoutError:
            raise ModelCallFailed("timeout", retryable=True) from None
        except anthropic.APIConnectionError:
            raise ModelCallFailed("connection", retryable=True) from None
        return AnthropicReply(response)

    async def aclose(self) -> None:
        await self._client.close()


class AnthropicReply:
    def __init__(self, response: anthropic.AsyncAPIResponse[Any]) -> None:
        self._response = response

    @property
    def headers(self) -> Mapping[str, str]:
        return _passed_on(self._response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except httpx2.TimeoutException:
            raise ModelCallFailed("timeout", retryable=True) from None
        except httpx2.HTTPError:
            raise ModelCallFailed("connection", retryable=True) from None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._response.iter_bytes():
                yield chunk
        except httpx2.TimeoutException:
            raise StreamBroken("timeout") from None
        except httpx2.HTTPError:
            raise StreamBroken("broken") from None

    async def aclose(self) -> None:
        await self._response.close()


def _status_error(exc: anthropic.APIStatusError) -> ModelCallFailed:
    status = exc.status_code
    response = exc.response
    try:
        body: bytes | None = response.content
    except httpx2.ResponseNotRead:
        body = None
    if status in (401, 403):
        # The gateway's key was refused: nothing the caller did, and no other model would fix it.
        return ModelCallFailed("provider_auth", retryable=False, status=status)
    retryable = status in (408, 429) or status >= 500
    if status == 529 or error_type(body) == "overloaded_error":
        reason = "overloaded"
    else:
        reason = f"status_{status // 100}xx" if status >= 500 else f"status_{status}"
    return ModelCallFailed(
        reason,
        retryable=retryable,
        status=status,
        body=body,
        headers=_passed_on(response.headers),
        retry_after=retry_after(response.headers),
    )


def _passed_on(headers: httpx2.Headers) -> dict[str, str]:
    return {name: headers[name] for name in _PASSED_ON if name in headers}
