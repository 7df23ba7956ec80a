"""Anthropic's Messages API for tests, on loopback, speaking the real wire format.

`POST /v1/messages` answers as the API documents: a Message object as JSON; with
`"stream": true` the server-sent-event sequence `message_start`,
`content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`,
`message_delta`, `message_stop` (each `event: <name>` / `data: <json>` and a blank
line); errors as `{"type": "error", "error": {"type": ..., "message": ...},
"request_id": ...}` with their status (529 for `overloaded_error`) and, for rate
limits, `retry-after`. What each model does next is scripted with `plan(model, ...)`:
`message`, `stream`, `error`, `hang` or `drop`; the last step of a plan repeats.
Every call is recorded, and every byte a stream sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API_KEY = "sk-ant-api03-test-" + "x" * 40


@dataclass
class Call:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]


Step = Callable[[web.Request, "AnthropicStandIn"], Awaitable[web.StreamResponse]]


def _request_id() -> str:
    return "req_" + os.urandom(12).hex()


def _message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def message(text: str = "Hello!", *, input_tokens: int = 12, output_tokens: int = 6, cache_read: int = 0) -> Step:
    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        body = await request.json()
        usage: dict[str, Any] = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if cache_read:
            usage |= {"cache_creation_input_tokens": 0, "cache_read_input_tokens": cache_read}
        answer = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        raw = json.dumps(answer).encode()
        api.sent.append(raw)
        return web.Response(body=raw, content_type="application/json", headers={"request-id": _request_id()})

    return step


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def stream_events(model: str, parts: list[str], *, input_tokens: int, output_tokens: int) -> list[bytes]:
    start = {
        "type": "message_start",
        "message": {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1, "service_tier": "standard"},
        },
    }
    events = [
        sse("message_start", start),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse("ping", {"type": "ping"}),
    ]
    events += [
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in parts
    ]
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def stream(
    parts: tuple[str, ...] = ("Hello", "!"),
    *,
    input_tokens: int = 25,
    output_tokens: int = 15,
    gate: asyncio.Event | None = None,
    gate_before: int = 1,
    fail_after: int | None = None,
    failure: str = "break",
) -> Step:
    """A streamed answer. With `gate`, waits for it before sending event number `gate_before`.
    With `fail_after`, after that many events: `break` (connection cut), `stall` (silence),
    `error` (an overloaded_error event, as the API sends mid-stream) or `end` (clean close)."""

    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        body = await request.json()
        events = stream_events(body["model"], list(parts), input_tokens=input_tokens, output_tokens=output_tokens)
        if fail_after is not None:
            events = events[:fail_after]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "request-id": _request_id()}
        )
        await response.prepare(request)
        for index, event in enumerate(events):
            if gate is not None and index == gate_before:
                await gate.wait()
            api.sent.append(event)
            await response.write(event)
        if fail_after is not None:
            if failure == "break":
                assert request.transport is not None
                request.transport.abort()
                return response
            if failure == "stall":
                await asyncio.sleep(3600)
            if failure == "error":
                event = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                api.sent.append(event)
                await response.write(event)
        await response.write_eof()
        return response

    return step


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error(status: int, message: str = "", *, retry_after: float | None = None, error_type: str | None = None) -> Step:
    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        kind = error_type or _ERROR_TYPES[status]
        request_id = _request_id()
        body = {"type": "error", "error": {"type": kind, "message": message or kind}, "request_id": request_id}
        headers = {"request-id": request_id}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        raw = json.dumps(body).encode()
        api.sent.append(raw)
        return web.Response(status=status, body=raw, content_type="application/json", headers=headers)

    return step


def hang() -> Step:
    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return step


def drop() -> Step:
    """Close the connection without an answer."""

    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    return step


@dataclass
class AnthropicStandIn:
    calls: list[Call] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    plans: dict[str, list[Step]] = field(default_factory=dict)
    server: TestServer | None = None

    def plan(self, model: str, *steps: Step) -> None:
        self.plans[model] = list(steps)

    def calls_for(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/")).rstrip("/")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        # The API takes the key as `x-api-key` or, as this SDK sends it, a bearer token.
        keys = (request.headers.get("x-api-key"), request.headers.get("Authorization", "").removeprefix("Bearer "))
        if API_KEY not in keys or not request.headers.get("anthropic-version"):
            return await error(401, "invalid x-api-key")(request, self)
        body = await request.json()
        self.calls.append(Call(body["model"], body, dict(request.headers)))
        plan = self.plans.get(body["model"]) or [error(404, f"model: {body['model']}")]
        step = plan.pop(0) if len(plan) > 1 else plan[0]
        return await step(request, self)

    async def start(self) -> None:
        app = web.Application(client_max_size=32 << 20)  # the API's own request limit
        app.router.add_post("/v1/messages", self._messages)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.close()
