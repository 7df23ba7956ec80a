"""What the fallback providers (OpenAI, Google AI) share: their replies and their errors, in Anthropic's terms.

Their answers are translated before the relay sees them (`ai/translate/`), so a
`TranslatedReply` holds Anthropic-format bytes: a whole message, or the event
stream. Their refusals become Anthropic error bodies (`{"type": "error",
"error": {"type": ..., "message": ...}}`) with the provider's status, so a
caller that speaks the Messages API reads them like any other.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping

import orjson

from ai.errors import ModelCallFailed

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_JSON = {"content-type": "application/json"}


class TranslatedReply:
    def __init__(
        self,
        *,
        body: bytes = b"",
        events: AsyncIterator[bytes] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._body = body
        self._events = events
        self._close = close

    @property
    def headers(self) -> Mapping[str, str]:
        return {}

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        if self._events is not None:
            async for chunk in self._events:
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            await close()


def status_error(provider: str, status: int, message: str, headers: Mapping[str, str]) -> ModelCallFailed:
    """A provider's error status as the relay's `ModelCallFailed`, its body in Anthropic's shape."""
    if status in (401, 403):
        # The gateway's key was refused: nothing the caller did.
        return ModelCallFailed("provider_auth", retryable=False, status=status)
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if kind == "overloaded_error":
        reason = "overloaded"
    else:
        reason = f"status_{status // 100}xx" if status >= 500 else f"status_{status}"
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": f"{provider}: {message}"}})
    return ModelCallFailed(
        reason,
        retryable=status in (408, 429) or status >= 500,
        status=status,
        body=body,
        headers=_JSON,
        retry_after=retry_after(headers),
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name, "")) * scale)
        except ValueError:
            continue
    return None
