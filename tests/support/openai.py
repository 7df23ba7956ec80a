"""OpenAI's Chat Completions API for tests, on loopback, speaking the real wire format.

`POST /v1/chat/completions` (bearer key) answers a `chat.completion` object; with
`"stream": true`, `data: <chat.completion.chunk>` lines ending with `data: [DONE]`:
a first chunk with the role, content deltas, tool calls as `tool_calls` deltas
(the first naming `id` and `function.name`, the next ones adding pieces of
`function.arguments`), a chunk with `finish_reason`, and, when
`stream_options.include_usage` asks for it, a last chunk with empty `choices` and
the `usage`. Errors are `{"error": {"message", "type", "param", "code"}}` with
their status.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from aiohttp import web

from tests.support.scripted import Call, ScriptedApi, Step, hang, json_answer, sse_answer

API_KEY = "sk-proj-test-" + "o" * 40
__all__ = ["API_KEY", "OpenAIStandIn", "completion", "error", "hang", "stream"]

ToolCall = tuple[str, dict[str, Any]]
"""A tool call to answer with: the function's name and its arguments."""


def _head(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + os.urandom(12).hex(),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_" + os.urandom(5).hex(),
        "service_tier": "default",
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _call_id() -> str:
    return "call_" + os.urandom(12).hex()


def completion(
    text: str | None = "Hello!",
    *,
    tool_calls: tuple[ToolCall, ...] = (),
    finish_reason: str | None = None,
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
) -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        said: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if tool_calls:
            said["tool_calls"] = [
                {"id": _call_id(), "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for name, args in tool_calls
            ]
        finish = finish_reason or ("tool_calls" if tool_calls else "stop")
        answer = {
            **_head(model),
            "object": "chat.completion",
            "choices": [{"index": 0, "message": said, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        return json_answer(api, answer)

    return step


def _chunk(model: str, head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**head, "model": model, "object": "chat.completion.chunk", "choices": [choice], "usage": None}


def _data(value: object) -> bytes:
    return b"data: " + (value if isinstance(value, bytes) else json.dumps(value).encode()) + b"\n\n"


def stream(
    parts: tuple[str, ...] = ("Hello", "!"),
    *,
    tool_calls: tuple[ToolCall, ...] = (),
    finish_reason: str | None = None,
    prompt_tokens: int = 21,
    completion_tokens: int = 9,
    fail_after: int | None = None,
) -> Step:
    """A streamed answer; each tool call's arguments arrive in three pieces."""

    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        head = _head(model)
        chunks = [_chunk(model, head, {"role": "assistant", "content": "", "refusal": None})]
        chunks += [_chunk(model, head, {"content": p}) for p in parts]
        for index, (name, args) in enumerate(tool_calls):
            start = {"index": index, "id": _call_id(), "type": "function", "function": {"name": name, "arguments": ""}}
            chunks.append(_chunk(model, head, {"tool_calls": [start]}))
            text = json.dumps(args)
            third = max(1, len(text) // 3)
            for piece in (text[:third], text[third : 2 * third], text[2 * third :]):
                chunks.append(_chunk(model, head, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        finish = finish_reason or ("tool_calls" if tool_calls else "stop")
        chunks.append(_chunk(model, head, {}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            for chunk in chunks:
                chunk["usage"] = None
            chunks.append(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(prompt_tokens, completion_tokens),
                }
            )
        events = [_data(c) for c in chunks] + [_data(b"[DONE]")]
        return await sse_answer(request, api, events, fail_after=fail_after)

    return step


_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def error(status: int, message: str = "", *, retry_after: float | None = None) -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        kind, code = _ERRORS[status]
        answer = {"error": {"message": message or kind, "type": kind, "param": None, "code": code}}
        headers = {"x-request-id": "req_" + os.urandom(12).hex()}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return json_answer(api, answer, status, **headers)

    return step


class OpenAIStandIn(ScriptedApi):
    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._completions)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return await error(401, "Incorrect API key provided")(request, self, body, "")
        model = str(body.get("model"))
        self.calls.append(Call(model, body, dict(request.headers), request.path))
        step = self.next_step(model, error(404, f"The model `{model}` does not exist or you do not have access to it."))
        return await step(request, self, body, model)
