"""The Gemini API for tests, on loopback, speaking the real wire format.

`POST /v1/models/{model}:generateContent` (or `/v1beta/…`, both versions are served) (key in `x-goog-api-key`) answers a
`GenerateContentResponse` (`candidates[].content.parts`, `finishReason`,
`usageMetadata`, `modelVersion`, `responseId`, camelCase as on the wire);
`:streamGenerateContent?alt=sse` sends one `data: <GenerateContentResponse>` per
chunk (events end with CRLF CRLF, as Google's servers send them), each function
call whole in its chunk with a `thoughtSignature`, the last chunk with the
`finishReason` and the usage. Errors are `{"error": {"code", "message",
"status"}}` with their status (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503
UNAVAILABLE…).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from aiohttp import web

from tests.support.scripted import Call, ScriptedApi, Step, hang, json_answer, sse_answer

API_KEY = "AIzaSy-test-" + "g" * 27
__all__ = ["API_KEY", "GeminiStandIn", "answer", "error", "hang", "stream"]

FunctionCall = tuple[str, dict[str, Any]]


def _signature() -> str:
    return base64.b64encode(os.urandom(24)).decode()


def _usage(prompt: int, candidates: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }


def _response(model: str, parts: list[dict[str, Any]], finish: str | None, usage: dict[str, Any]) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("="),
    }


def _call_part(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"functionCall": {"name": name, "args": args}, "thoughtSignature": _signature()}


def answer(
    text: str | None = "Hello!",
    *,
    function_calls: tuple[FunctionCall, ...] = (),
    finish_reason: str = "STOP",
    prompt_tokens: int = 13,
    candidates_tokens: int = 5,
) -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        parts = [{"text": text}] if text else []
        parts += [_call_part(name, args) for name, args in function_calls]
        return json_answer(api, _response(model, parts, finish_reason, _usage(prompt_tokens, candidates_tokens)))

    return step


def stream(
    parts: tuple[str, ...] = ("Hello", "!"),
    *,
    function_calls: tuple[FunctionCall, ...] = (),
    finish_reason: str = "STOP",
    prompt_tokens: int = 17,
    candidates_tokens: int = 8,
    fail_after: int | None = None,
) -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        # Gemini reports the usage so far in every chunk; the prompt is counted from the first.
        chunks = [
            _response(model, [{"text": p}], None, _usage(prompt_tokens, i + 1) | {"candidatesTokenCount": i + 1})
            for i, p in enumerate(parts)
        ]
        chunks += [_response(model, [_call_part(n, a)], None, _usage(prompt_tokens, 1)) for n, a in function_calls]
        chunks.append(_response(model, [{"text": ""}], finish_reason, _usage(prompt_tokens, candidates_tokens)))
        events = [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]
        return await sse_answer(request, api, events, fail_after=fail_after)

    return step


_STATUSES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error(status: int, message: str = "") -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        answer = {"error": {"code": status, "message": message or _STATUSES[status], "status": _STATUSES[status]}}
        return json_answer(api, answer, status)

    return step


class GeminiStandIn(ScriptedApi):
    def routes(self, app: web.Application) -> None:
        for version in ("v1", "v1beta"):
            app.router.add_post(f"/{version}/models/{{target}}", self._models)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, _, method = request.match_info["target"].partition(":")
        if request.headers.get("x-goog-api-key") != API_KEY:
            return await error(403, "Method doesn't allow unregistered callers.")(request, self, body, model)
        streaming = method == "streamGenerateContent"
        if method not in ("generateContent", "streamGenerateContent") or (
            streaming and request.query.get("alt") != "sse"
        ):
            return await error(404, f"unknown method {method}")(request, self, body, model)
        self.calls.append(Call(model, body, dict(request.headers), request.path_qs))
        missing = error(404, f"models/{model} is not found for API version v1beta")
        return await self.next_step(model, missing)(request, self, body, model)
