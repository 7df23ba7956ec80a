"""The AI relay's HTTP surface (contract §3) and its lifecycle.

    POST /v1/ai/messages      the Messages API; streaming passes server-sent events through
    POST /v1/ai/v1/messages   the same, where an Anthropic SDK with base_url `<gateway>/v1/ai` sends it
    GET  /v1/ai/usage         this month's tokens by model, and the cap

Registered through `gateway/app.py`'s `CHANNELS`: that tuple is the list of modules
that plug into the app with `setup(app)`, and the relay plugs in exactly like a
channel does (routes, a clean-up context, status and export hooks). A sibling
tuple would only repeat the same loop.

What the caller sees:
- a whole answer: the provider's JSON body, byte for byte;
- a stream: the provider's events byte for byte, each written as soon as it is
  complete. A stream that fails after it began ends with an `error` event
  (`api_error`), never with a clean end;
- a provider's refusal (4xx) or the last failure of an exhausted chain: the
  provider's status and body as sent (`{"type": "error", "error": {...}}`);
- the gateway's own refusals (400 bad request, 401, 402 cap, 503 relay off,
  502/504 nothing answered): `{"error": "<code>", "detail": "..."}`.
`ally-ai-model` names the model that answered (or failed last) whenever one did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping

from aiohttp import web
from multidict import CIMultiDict

from ai.chain import Chain, Link, Opened, RetryPolicy
from ai.errors import ProviderError, StreamBroken
from ai.metering import Meter, StreamCounter, Tokens, tokens_of_message
from ai.provider import Provider
from ai.request import parse
from ai.sse import error_event
from gateway import metrics
from gateway.auth import require_server
from gateway.config import Settings
from gateway.errors import ApiError, ClosedError, ConfigError, StorageError
from gateway.http import json_response, read_json_object, write_within
from gateway.keys import SERVICES, SETTINGS

log = logging.getLogger(__name__)

MODEL_HEADER = "ally-ai-model"
# Anthropic accepts Messages requests up to 32 MB (images and documents inline).
MAX_BODY = 32 << 20
_PROVIDER_PREFIX = re.compile(r"^([a-z][a-z0-9-]*):(.+)$")
PROVIDERS = ("anthropic",)


def fallback_names(settings: Settings) -> list[tuple[str, str]]:
    """`ALLY_AI_FALLBACKS` as (provider, model) pairs; `<provider>:<model>` picks a provider."""
    pairs = []
    for entry in settings.ai_fallbacks:
        match = _PROVIDER_PREFIX.match(entry)
        provider, model = (match.group(1), match.group(2)) if match else ("anthropic", entry)
        if provider not in PROVIDERS:
            raise ConfigError(f"ALLY_AI_FALLBACKS: unknown provider {provider!r} in {entry!r} (known: anthropic)")
        pairs.append((provider, model))
    return pairs


class Relay:
    """The relay's running parts: started with the app, closed with it, refused after."""

    def __init__(self) -> None:
        self._meter: Meter | None = None
        self._chain: Chain | None = None
        self._providers: list[Provider] = []
        self._closed = False

    def start(self, meter: Meter, chain: Chain | None, providers: list[Provider]) -> None:
        self._meter, self._chain, self._providers = meter, chain, providers

    @property
    def meter(self) -> Meter:
        if self._closed or self._meter is None:
            raise ClosedError("the AI relay is not running")
        return self._meter

    @property
    def chain(self) -> Chain:
        if self._closed:
            raise ClosedError("the AI relay is closed")
        if self._chain is None:
            raise ApiError("ai_disabled", "the AI relay is not configured on this gateway", status=503)
        return self._chain

    async def aclose(self) -> None:
        self._closed = True
        for provider in self._providers:
            try:
                await provider.aclose()
            except Exception:
                log.exception("closing an AI provider failed", extra={"provider": provider.name})


RELAY = web.AppKey("ai_relay", Relay)


async def messages(request: web.Request) -> web.StreamResponse:
    user_id = await require_server(request)
    relay = request.app[RELAY]
    chain = relay.chain
    ask = parse(await read_json_object(request, limit=MAX_BODY), beta=request.headers.get("anthropic-beta"))
    try:
        await relay.meter.check(user_id)
    except ApiError:
        metrics.AI_REQUESTS.labels("quota").inc()
        raise
    try:
        opened = await chain.open(ask)
    except ProviderError as exc:
        return _failure(exc)
    if ask.stream:
        return await _stream(request, relay.meter, user_id, opened)
    return await _whole(relay.meter, user_id, opened)


async def _whole(meter: Meter, user_id: str, opened: Opened) -> web.Response:
    await opened.aclose()
    tokens = tokens_of_message(opened.body)
    await _record(meter, user_id, opened, tokens, outcome="ok")
    headers = _headers(opened.reply.headers, {MODEL_HEADER: opened.link.model})
    return web.Response(body=opened.body, headers=headers)


async def _stream(request: web.Request, meter: Meter, user_id: str, opened: Opened) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **{k: v for k, v in opened.reply.headers.items() if k == "request-id"},
            MODEL_HEADER: opened.link.model,
        }
    )
    counter = StreamCounter()
    outcome = "ok"
    try:
        await response.prepare(request)
        outcome = await _pass_events(request, response, opened, counter)
    except ConnectionError:
        outcome = "caller_gone"
    except Exception:
        # Headers are gone already, so no JSON error can follow: end the stream with an error event.
        log.exception("relaying the stream failed")
        outcome = "relay_error"
        with contextlib.suppress(Exception):
            await write_within(
                request, response, error_event("api_error", "the gateway failed while relaying the stream")
            )
    finally:
        # Shielded: a caller that went away must not cost the usage its request incurred.
        await asyncio.shield(_finish(meter, user_id, opened, counter.tokens, outcome))
    if outcome != "caller_gone" and response.prepared:
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


async def _pass_events(
    request: web.Request, response: web.StreamResponse, opened: Opened, counter: StreamCounter
) -> str:
    # Every write is bounded: a caller that stops reading must not hold the model's stream open.
    try:
        async for batch in opened.events():
            for event in batch:
                counter.see(event)
            # Events that arrived together leave together: one write, not one per event.
            await write_within(request, response, b"".join(event.raw for event in batch))
    except StreamBroken as exc:
        if not counter.stopped:
            await write_within(request, response, error_event("api_error", _BROKEN[exc.reason]))
            return f"stream_{exc.reason}"
    if counter.stopped:
        if opened.leftover:
            await write_within(request, response, opened.leftover)
        return "ok"
    if counter.errored:
        return "stream_error"
    await write_within(request, response, error_event("api_error", _BROKEN["ended"]))
    return "stream_ended"


_BROKEN = {
    "timeout": "the model's stream stalled and was cut off before its end",
    "broken": "the connection to the model broke before the stream's end",
    "ended": "the model's stream ended without message_stop",
    "oversized": "the model's stream sent an event too large to relay",
}


async def _finish(meter: Meter, user_id: str, opened: Opened, tokens: Tokens, outcome: str) -> None:
    try:
        await opened.aclose()
    except Exception:
        log.warning("closing the model's stream failed", exc_info=True)
    await _record(meter, user_id, opened, tokens, outcome=outcome)


async def _record(meter: Meter, user_id: str, opened: Opened, tokens: Tokens, *, outcome: str) -> None:
    metrics.AI_REQUESTS.labels(outcome).inc()
    metrics.AI_TOKENS.labels("input").inc(tokens.input)
    metrics.AI_TOKENS.labels("output").inc(tokens.output)
    extra = {
        "user_id": user_id,
        "model": opened.link.model,
        "fell_back": opened.fell_back,
        "input_tokens": tokens.input,
        "output_tokens": tokens.output,
        "outcome": outcome,
    }
    try:
        await meter.record(user_id, opened.link.model, tokens)
    except StorageError:
        # The answer is already on its way; losing the count is better than losing the answer.
        log.error("AI usage could not be recorded", extra=extra)
        return
    log.info("AI request served", extra=extra)


def _failure(exc: ProviderError) -> web.Response:
    metrics.AI_REQUESTS.labels(f"failed_{exc.reason}").inc()
    log.warning("AI request failed", extra={"model": exc.model, "reason": exc.reason, "status": exc.status})
    if exc.reason == "provider_auth":
        raise ApiError("ai_unavailable", "the AI provider refused the gateway's credentials", status=502)
    if exc.status is None or exc.body is None:
        status = 504 if exc.reason == "timeout" else 502
        raise ApiError("ai_unavailable", f"no model in the chain answered (last: {exc.reason})", status=status)
    headers = _headers(exc.headers, {MODEL_HEADER: exc.model} if exc.model else {})
    return web.Response(status=exc.status, body=exc.body, headers=headers)


def _headers(*parts: Mapping[str, str]) -> CIMultiDict[str]:
    """JSON by default; the provider's own headers replace ours case-insensitively, never duplicate them."""
    headers = CIMultiDict({"Content-Type": "application/json"})
    for part in parts:
        headers.update(part)
    return headers


async def usage(request: web.Request) -> web.Response:
    user_id = await require_server(request)
    return json_response(await request.app[RELAY].meter.usage(user_id))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    services = app[SERVICES]
    meter = Meter(services.redis, services.keys, settings.ai_monthly_tokens)
    providers: list[Provider] = []
    chain = None
    if settings.ai_enabled:
        # Imported only when the relay is on: the SDK takes seconds to import, which every
        # operator command would otherwise pay.
        from ai.anthropic_provider import AnthropicProvider

        assert settings.anthropic_api_key is not None
        anthropic = AnthropicProvider(
            api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, timeout=settings.ai_timeout
        )
        providers.append(anthropic)
        by_name: dict[str, Provider] = {"anthropic": anthropic}
        fallbacks = [Link(by_name[p], model) for p, model in fallback_names(settings)]
        chain = Chain(anthropic, fallbacks, RetryPolicy(attempts=settings.ai_attempts, backoff=settings.ai_backoff))
    relay = app[RELAY]
    relay.start(meter, chain, providers)
    services.hooks.status["ai"] = meter.usage
    services.hooks.export["ai"] = meter.export
    try:
        yield
    finally:
        await relay.aclose()


def setup(app: web.Application) -> None:
    fallback_names(app[SETTINGS])  # a bad ALLY_AI_FALLBACKS stops the process at start
    app[RELAY] = Relay()
    app.router.add_post("/v1/ai/messages", messages)
    app.router.add_post("/v1/ai/v1/messages", messages)
    app.router.add_get("/v1/ai/usage", usage)
    app.cleanup_ctx.append(_lifecycle)
