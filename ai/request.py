"""The Messages API request, checked enough that garbage gets a 400 and never reaches a provider.

Only the shape is checked here (types of the fields the API defines, roles, block
types present); what a model accepts is the provider's to judge, and its 400 is
passed back. Fields this module does not know are forwarded as given, so new API
fields work without a gateway release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from gateway.errors import BadRequest

MAX_MESSAGES = 100_000
_ROLES = ("user", "assistant")
# Field name -> (accepted JSON types, what the 400 says it must be).
_OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "system": ((str, list), "a string or a list of text blocks"),
    "metadata": ((dict,), "an object"),
    "stop_sequences": ((list,), "a list of strings"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "top_k": ((int,), "an integer"),
    "tools": ((list,), "a list"),
    "tool_choice": ((dict,), "an object"),
    "thinking": ((dict,), "an object"),
}


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    stream: bool
    extra: dict[str, Any]
    """Every other field of the body, forwarded unchanged."""
    beta: str | None = None
    """The caller's `anthropic-beta` header, forwarded unchanged."""


def parse(body: dict[str, Any], *, beta: str | None = None) -> MessagesRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise _bad("model", "must be a non-empty string")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 0:
        raise _bad("max_tokens", "must be a whole number, 0 or more")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    messages = _messages(body.get("messages"))
    extra = {k: v for k, v in body.items() if k not in ("model", "max_tokens", "messages", "stream")}
    for name, (types, what) in _OPTIONAL.items():
        value = extra.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise _bad(name, f"must be {what}")
    if any(not isinstance(s, str) for s in extra.get("stop_sequences") or ()):
        raise _bad("stop_sequences", "must be a list of strings")
    if isinstance(extra.get("system"), list) and not all(_is_block(b) for b in extra["system"]):
        raise _bad("system", "must be a string or a list of text blocks")
    if beta is not None and (len(beta) > 1024 or not beta.isprintable()):
        raise BadRequest("invalid_request", "the anthropic-beta header is malformed")
    return MessagesRequest(model, max_tokens, messages, stream, extra, beta)


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise _bad("messages", f"may hold at most {MAX_MESSAGES} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"messages[{i}]", "must be an object with role user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(_is_block(b) for b in content):
            raise _bad(f"messages[{i}].content", "must be a string or a list of content blocks with a type")
    return value


def _is_block(block: object) -> bool:
    return isinstance(block, dict) and isinstance(block.get("type"), str)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest("invalid_request", f"{field} {problem}")
