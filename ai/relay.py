"""The AI relay's HTTP surface (contract §3) and its lifecycle.

    POST /v1/ai/messages      the Messages API; streaming passes server-sent events through
    POST /v1/ai/v1/messages   the same, where an Anthropic SDK with base_url `<gateway>/v1/ai` sends it
    GET  /v1/ai/usage         this month's tokens by model, and the cap

Registered through `gateway/app.py`'s `PLUGINS`: that tuple is the list of modules
that plug into the app with `setup(app) -> Plugin`, and the relay plugs in exactly like
a channel does (routes, its own start and stop, status and export hooks). A sibling
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
`ally-ai-model` names the model that answered (or failed last) whenever one did,
`ally-ai-provider` its provider (`anthropic`, `openai` or `google`).

Before any of that, a request takes one of the user's `ALLY_AI_CONCURRENCY` slots
(429 `ai_busy` beyond) and, with a cap, reserves its tokens (`admission.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ai.admission import Admission, Slot
from ai.chain import Chain, Link, Opened, RetryPolicy
from ai.errors import ModelCallFailed, StreamBroken
from ai.metering import Meter, StreamCounter, Tokens, tokens_of_message
from ai.provider import Provider
from ai.request import Policy, parse
from ai.sse import error_event
from foundation import metrics
from foundation.app_keys import SETTINGS
from foundation.config import Settings
from foundation.errors import ApiError, BadRequest, ClosedError, ConfigError, StorageError
from foundation.http import json_response, read_body, write_within
from routing.access import require_server
from routing.hooks import Hooks
from routing.plugin import Plugin
from routing.services import Services

log = logging.getLogger(__name__)

MODEL_HEADER = "ally-ai-model"
PROVIDER_HEADER = "ally-ai-provider"
# Anthropic accepts Messages requests up to 32 MB (images and documents inline).
MAX_BODY = 32 << 20
_PROVIDER_PREFIX = re.compile(r"^([a-z][a-z0-9-]*):(.+)$")
# Provider name -> the variable holding its key.
PROVIDERS = {"anthropic": "ALLY_ANTHROPIC_API_KEY", "openai": "ALLY_OPENAI_API_KEY", "google": "ALLY_GEMINI_API_KEY"}


def fallback_names(settings: Settings) -> list[tuple[str, str]]:
    """`ALLY_AI_FALLBACKS` as (provider, model) pairs; `<provider>:<model>` picks a provider."""
    keys = {
        "anthropic": settings.anthropic_api_key,
        "openai": settings.openai_api_key,
        "google": settings.gemini_api_key,
    }
    pairs = []
    for entry in settings.ai_fallbacks:
        match = _PROVIDER_PREFIX.match(entry)
        provider, model = (match.group(1), match.group(2)) if match else ("anthropic", entry)
        if provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise ConfigError(f"ALLY_AI_FALLBACKS: unknown provider {provider!r} in {entry!r} (known: {known})")
        if settings.ai_enabled and not keys[provider]:
            raise ConfigError(f"ALLY_AI_FALLBACKS names {provider!r} ({entry!r}) but {PROVIDERS[provider]} is not set")
        pairs.append((provider, model))
    return pairs


class Relay:
    """The relay's running parts: started with the app, closed with it, refused after."""

    def __init__(self) -> None:
        self._meter: Meter | None = None
        self._admission: Admission | None = None
        self._chain: Chain | None = None
        self._providers: list[Provider] = []
        self.policy = Policy()
        self._closed = False

    def start(self, meter: Meter, admission: Admission, chain: Chain | None, providers: list[Provider]) -> None:
        self._meter, self._admission, self._chain, self._providers = meter, admission, chain, providers

    @property
    def admission(self) -> Admission:
        if self._closed or self._admission is None:
            raise ClosedError("the AI relay is not running")
        return self._admission

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
    try:
        slot = await relay.admission.enter(user_id)
    except ApiError:
        metrics.AI_REQUESTS.labels("busy").inc()
        raise
    try:
        return await _admitted(request, relay, chain, slot)
    finally:
        await asyncio.shield(slot.release())


async def _admitted(request: web.Request, relay: Relay, chain: Chain, slot: Slot) -> web.StreamResponse:
    raw = await read_body(request, limit=MAX_BODY)
    policy = relay.policy
    ask = parse(_json_object(raw), beta=request.headers.get("anthropic-beta"), policy=policy, size=len(raw))
    del raw
    try:
        await slot.reserve(ask)
    except ApiError:
        metrics.AI_REQUESTS.labels("quota").inc()
        raise
    try:
        opened = await chain.open(ask)
    except ModelCallFailed as exc:
        return _failure(exc)
    if ask.stream:
        return await _stream(request, relay.meter, slot.user_id, opened)
    return await _whole(relay.meter, slot.user_id, opened)


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        value = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("invalid_json", "body must be a JSON object")
    return value


async def _whole(meter: Meter, user_id: str, opened: Opened) -> web.Response:
    await opened.aclose()
    tokens = tokens_of_message(opened.body)
    await _record(meter, user_id, opened, tokens, outcome="ok")
    headers = _headers(opened.reply.headers, _served_by(opened))
    return web.Response(body=opened.body, headers=headers)


def _served_by(opened: Opened) -> dict[str, str]:
    return {MODEL_HEADER: opened.link.model, PROVIDER_HEADER: opened.link.provider.name}


async def _stream(request: web.Request, meter: Meter, user_id: str, opened: Opened) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **{k: v for k, v in opened.reply.headers.items() if k == "request-id"},
            **_served_by(opened),
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
        "provider": opened.link.provider.name,
        "fell_back": opened.fell_back,
        "input_tokens": tokens.input,
        "output_tokens": tokens.output,
        "outcome": outcome,
    }
    try:
        await meter.record(user_id, opened.link.provider.name, opened.link.model, tokens)
    except StorageError:
        # The answer is already on its way; losing the count is better than losing the answer.
        log.error("AI usage could not be recorded", extra=extra)
        return
    log.info("AI request served", extra=extra)


def _failure(exc: ModelCallFailed) -> web.Response:
    metrics.AI_REQUESTS.labels(f"failed_{exc.reason}").inc()
    log.warning(
        "AI request failed",
        extra={"model": exc.model, "provider": exc.provider, "reason": exc.reason, "status": exc.status},
    )
    if exc.reason == "provider_auth":
        raise ApiError("ai_unavailable", "the AI provider refused the gateway's credentials", status=502)
    if exc.status is None or exc.body is None:
        status = 504 if exc.reason == "timeout" else 502
        raise ApiError("ai_unavailable", f"no model in the chain answered (last: {exc.reason})", status=status)
    served = {MODEL_HEADER: exc.model, PROVIDER_HEADER: exc.provider} if exc.model and exc.provider else {}
    headers = _headers(exc.headers, served)
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


def _providers(settings: Settings) -> dict[str, Provider]:
    """Every provider with a key, by name; Anthropic first, as the default."""
    # Imported only when the relay is on: the SDKs take seconds to import, which every operator
    # command would otherwise pay (and here, in a thread, the event loop does not wait for it).
    from ai.anthropic_provider import AnthropicProvider
    from ai.gemini_provider import GeminiProvider
    from ai.openai_provider import OpenAIProvider

    timeout = settings.ai_timeout
    providers: dict[str, Provider] = {}
    if settings.anthropic_api_key:
        providers["anthropic"] = AnthropicProvider(
            api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, timeout=timeout
        )
    if settings.openai_api_key:
        providers["openai"] = OpenAIProvider(
            api_key=settings.openai_api_key, base_url=settings.openai_base_url, timeout=timeout
        )
    if settings.gemini_api_key:
        providers["google"] = GeminiProvider(
            api_key=settings.gemini_api_key, base_url=settings.gemini_base_url, timeout=timeout
        )
    return providers


@asynccontextmanager
async def _lifecycle(relay: Relay, services: Services) -> AsyncIterator[None]:
    settings = services.settings
    meter = Meter(services.redis, services.keys, settings.ai_monthly_tokens)
    admission = Admission(services.redis, services.keys, meter, concurrency=settings.ai_concurrency)
    providers: dict[str, Provider] = {}
    chain = None
    if settings.ai_enabled:
        # SDK imports and clients (certificates, settings) are blocking work: off the event loop.
        providers = await asyncio.to_thread(_providers, settings)
        fallbacks = [Link(providers[p], model) for p, model in fallback_names(settings)]
        policy = RetryPolicy(attempts=settings.ai_attempts, backoff=settings.ai_backoff)
        chain = Chain(providers["anthropic"], fallbacks, policy)
    relay.policy = Policy.of(settings.ai_allowed_server_tools, settings.ai_allowed_betas)
    relay.start(meter, admission, chain, list(providers.values()))
    try:
        yield
    finally:
        await relay.aclose()


def setup(app: web.Application) -> Plugin:
    fallback_names(app[SETTINGS])  # a bad ALLY_AI_FALLBACKS stops the process at start
    relay = app[RELAY] = Relay()

    async def status(user_id: str) -> dict[str, Any]:
        return await relay.meter.usage(user_id)

    async def export(user_id: str) -> dict[str, Any]:
        return await relay.meter.export(user_id)

    return Plugin(
        name="ai",
        routes=[
            web.post("/v1/ai/messages", messages),
            web.post("/v1/ai/v1/messages", messages),
            web.get("/v1/ai/usage", usage),
        ],
        hooks=Hooks(status={"ai": status}, export={"ai": export}),
        start=functools.partial(_lifecycle, relay),
    )
