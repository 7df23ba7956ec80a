"""Retries with backoff, then the next model of the chain, until an answer has begun.

The chain for a request is its own model, then each of `ALLY_AI_FALLBACKS` (less
that model). Each link gets `ALLY_AI_ATTEMPTS` attempts (tenacity; backoff from
`ALLY_AI_BACKOFF` seconds, doubling, ±20 % jitter, at most 8 s; a provider's
`retry-after` is honoured when it is within that bound, and a longer one moves on
at once). Only failures before the first byte reach the caller are retried:
429, 408, 5xx (529 overloaded included), timeouts, connection errors, and a
stream whose first event is a retryable `error`. Anything else (400
invalid_request_error, a context that is too long, an unknown model) ends the
chain and is the caller's to see.

"First byte" means: a non-streaming answer read whole, or a stream's first event
that is not a `ping`. The caller has seen nothing until then, so moving on is
invisible to it apart from the `ally-ai-model` header.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ai.errors import ModelCallFailed, StreamBroken, Untranslatable
from ai.provider import Provider, Reply
from ai.request import MessagesRequest
from ai.sse import SseEvent, SseSplitter, error_type
from foundation import metrics

log = logging.getLogger(__name__)

# In-stream error types worth another attempt, with the status they carry as plain answers.
RETRYABLE_STREAM_ERRORS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429, "timeout_error": 504}
_KEEPALIVE = ("ping", "")
# No event of the Messages API comes near this; a stream that does is not one.
MAX_EVENT_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class Link:
    provider: Provider
    model: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0


class Opened:
    """An answer that has begun: the whole body, or a stream with its first events read."""

    def __init__(
        self,
        link: Link,
        reply: Reply,
        *,
        body: bytes = b"",
        chunks: AsyncGenerator[bytes, None] | None = None,
        splitter: SseSplitter | None = None,
        head: Sequence[SseEvent] = (),
    ) -> None:
        self.link = link
        self.reply = reply
        self.body = body
        self.fell_back = 0
        self._chunks = chunks
        self._splitter = splitter or SseSplitter()
        self._head = list(head)

    async def events(self) -> AsyncIterator[list[SseEvent]]:
        """Every event of the stream, in batches as they completed (the ones read before committing
        first). A batch is never held back for a later one. Raises `StreamBroken`."""
        head, self._head = self._head, []
        if head:
            yield head
        if self._chunks is not None:
            async for chunk in self._chunks:
                if batch := _feed(self._splitter, chunk):
                    yield batch

    @property
    def leftover(self) -> bytes:
        """Bytes after the last complete event."""
        return self._splitter.pending

    async def aclose(self) -> None:
        try:
            if self._chunks is not None:
                await self._chunks.aclose()
        finally:
            await self.reply.aclose()


class Chain:
    def __init__(self, default: Provider, fallbacks: Sequence[Link], policy: RetryPolicy) -> None:
        self._default = default
        self._fallbacks = tuple(fallbacks)
        self._policy = policy

    def links(self, model: str) -> list[Link]:
        first = Link(self._default, model)
        return [first, *(link for link in self._fallbacks if link != first)]

    async def open(self, request: MessagesRequest) -> Opened:
        """The first link's answer that began; else the failure the caller should see (`ModelCallFailed`).

        A link whose provider cannot express the request is skipped. When a link of another
        provider than the first fails for good, the first link's failure is what the caller
        sees: the caller asked the first provider, and speaks its language.
        """
        links = self.links(request.model)
        first: ModelCallFailed | None = None
        last: ModelCallFailed | None = None
        for index, link in enumerate(links):
            try:
                opened = await self._with_retries(link, request)
            except Untranslatable as exc:
                log.info("fallback skipped: the request has no equivalent there", extra=_about(link, exc.feature))
                continue
            except ModelCallFailed as exc:
                exc.model, exc.provider = link.model, link.provider.name
                first, last = first or exc, exc
                if not exc.retryable:
                    raise (exc if link.provider is self._default else first) from None
                metrics.AI_FALLBACKS.labels(exc.reason).inc()
                log.warning("model failed before its first byte; falling back", extra=_about(link, exc.reason))
                continue
            opened.fell_back = index
            return opened
        # The first link is the default provider's, which expresses every request: `last` is set.
        assert last is not None
        raise last

    async def _with_retries(self, link: Link, request: MessagesRequest) -> Opened:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._worth_retrying),
            before_sleep=self._note_retry,
            reraise=True,
        )
        return await retrying(self._attempt, link, request)

    def _worth_retrying(self, exc: BaseException) -> bool:
        if not isinstance(exc, ModelCallFailed) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self._policy.max_backoff

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ModelCallFailed) and exc.retry_after is not None:
            return exc.retry_after
        delay = self._policy.backoff * 2.0 ** (state.attempt_number - 1)
        return min(self._policy.max_backoff, delay) * random.uniform(0.8, 1.2)

    def _note_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, ModelCallFailed) else "unknown"
        link = state.args[0] if state.args else None
        metrics.AI_RETRIES.labels(reason).inc()
        log.info(
            "retrying the model",
            extra={"model": getattr(link, "model", None), "attempt": state.attempt_number, "reason": reason},
        )

    async def _attempt(self, link: Link, request: MessagesRequest) -> Opened:
        reply = await link.provider.open(link.model, request)
        try:
            if not request.stream:
                return Opened(link, reply, body=await reply.read())
            chunks = reply.chunks()
            splitter = SseSplitter()
            head = await _first_events(chunks, splitter)
            return Opened(link, reply, chunks=chunks, splitter=splitter, head=head)
        except BaseException:
            await reply.aclose()
            raise


async def _first_events(chunks: AsyncIterator[bytes], splitter: SseSplitter) -> list[SseEvent]:
    """Read up to and including the first event that is not a keep-alive."""
    head: list[SseEvent] = []
    try:
        async for chunk in chunks:
            head += _feed(splitter, chunk)
            first = next((e for e in head if e.name not in _KEEPALIVE), None)
            if first is None:
                continue
            kind = error_type(first.data) if first.name == "error" else None
            if kind is not None and kind in RETRYABLE_STREAM_ERRORS:
                raise ModelCallFailed(
                    "overloaded" if kind == "overloaded_error" else f"stream_{kind}",
                    retryable=True,
                    status=RETRYABLE_STREAM_ERRORS[kind],
                    body=first.data,
                    headers={"content-type": "application/json"},
                )
            return head
    except StreamBroken as exc:
        raise ModelCallFailed(exc.reason, retryable=True) from None
    raise ModelCallFailed("broken", retryable=True)


def _feed(splitter: SseSplitter, chunk: bytes) -> list[SseEvent]:
    events = splitter.feed(chunk)
    if len(splitter.pending) > MAX_EVENT_BYTES:
        raise StreamBroken("oversized")
    return events


def _about(link: Link, reason: str) -> dict[str, str]:
    return {"provider": link.provider.name, "model": link.model, "reason": reason}
