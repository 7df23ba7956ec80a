"""The Messages API request, parsed and checked before anything reaches a provider.

The gateway relays on its own key, so what a caller may ask for is what the
Messages API defines for a client and nothing more: a field this module does not
know is refused (400), and the request sent upstream is built from the parsed
value (`MessagesRequest.options`), never from the caller's body. Features that
run on the provider's side at the gateway's cost and risk (server tools such as
`web_search_*` or `code_execution_*`, `mcp_servers`, `container`) are refused
unless `ALLY_AI_ALLOWED_SERVER_TOOLS` names them, and `anthropic-beta` values
unless `ALLY_AI_ALLOWED_BETAS` does. What a model accepts beyond the shape is
the provider's to judge, and its 400 is passed back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from foundation.errors import BadRequest

MAX_MESSAGES = 100_000
_ROLES = ("user", "assistant")
# Field name -> (accepted JSON types, what the 400 says it must be). The fields of the pinned
# SDK's `MessageCreateParams` (a test compares) and the sampling parameters older models take.
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
    "service_tier": ((str,), "a string"),
    "cache_control": ((dict,), "an object"),
    "output_config": ((dict,), "an object"),
    "diagnostics": ((dict,), "an object"),
    "inference_geo": ((str,), "a string"),
    "speed": ((str,), "a string"),
    "mcp_servers": ((list,), "a list"),
    "container": ((str, dict), "a string or an object"),
}
# Fields of the API that pick the account a request runs for: on this relay that is the gateway's.
ACCOUNT_FIELDS = ("workspace_id", "user_profile_id")
_REQUIRED = ("model", "max_tokens", "messages", "stream")
# Request fields that make the provider act on the gateway's account; allowed only by name.
_GATED_FIELDS = ("mcp_servers", "container")
# Content blocks a client writes itself; the others are results of server tools.
CLIENT_BLOCKS = frozenset(
    ("text", "image", "document", "search_result", "tool_use", "tool_result", "thinking", "redacted_thinking")
)
# `web_search_20250305` is allowed by `web_search_20250305` or by its family `web_search`.
_DATED = re.compile(r"^(.+?)_\d{8}$")


@dataclass(frozen=True, slots=True)
class Policy:
    """What this gateway lets callers use beyond plain Messages (`ALLY_AI_ALLOWED_*`)."""

    server_tools: frozenset[str] = frozenset()
    betas: frozenset[str] = frozenset()

    @classmethod
    def of(cls, server_tools: Iterable[str] = (), betas: Iterable[str] = ()) -> Policy:
        return cls(frozenset(server_tools), frozenset(betas))

    def allows_tool(self, kind: str) -> bool:
        match = _DATED.match(kind)
        return kind in self.server_tools or (match is not None and match.group(1) in self.server_tools)


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    stream: bool
    options: dict[str, Any] = field(default_factory=dict)
    """The other Messages fields the caller set, checked and rebuilt."""
    betas: tuple[str, ...] = ()
    """`anthropic-beta` values, each one this gateway allows."""
    size: int = 0
    """Bytes of the caller's body, for the cap's input estimate."""


def parse(
    body: dict[str, Any], *, beta: str | None = None, policy: Policy = Policy(), size: int = 0
) -> MessagesRequest:
    for name in ACCOUNT_FIELDS:
        if name in body:
            raise _bad(name, "picks the account a request runs for, which is this gateway's")
    unknown = sorted(set(body) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _bad(unknown[0][:64], "is not a field of the Messages API this gateway relays")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise _bad("model", "must be a non-empty string")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 0:
        raise _bad("max_tokens", "must be a whole number, 0 or more")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    options = _options(body, policy)
    messages = _messages(body.get("messages"), server_blocks=bool(policy.server_tools))
    return MessagesRequest(model, max_tokens, messages, stream, options, _betas(beta, policy), size)


def _options(body: dict[str, Any], policy: Policy) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, (types, what) in _OPTIONAL.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise _bad(name, f"must be {what}")
        if name in _GATED_FIELDS and name not in policy.server_tools:
            raise _bad(name, "is not allowed on this gateway (ALLY_AI_ALLOWED_SERVER_TOOLS)")
        options[name] = value
    if any(not isinstance(s, str) for s in options.get("stop_sequences") or ()):
        raise _bad("stop_sequences", "must be a list of strings")
    if isinstance(options.get("system"), list) and not all(_is_text(b) for b in options["system"]):
        raise _bad("system", "must be a string or a list of text blocks")
    if "metadata" in options:
        options["metadata"] = _metadata(options["metadata"])
    for i, tool in enumerate(options.get("tools") or ()):
        _check_tool(f"tools[{i}]", tool, policy)
    return options


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    extra = sorted(set(value) - {"user_id"})
    if extra:
        raise _bad(f"metadata.{extra[0][:64]}", "is not a field of the Messages API this gateway relays")
    user_id = value.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
        raise _bad("metadata.user_id", "must be a string of at most 256 characters")
    return {} if user_id is None else {"user_id": user_id}


def _check_tool(where: str, tool: object, policy: Policy) -> None:
    if not isinstance(tool, dict):
        raise _bad(where, "must be an object")
    kind = tool.get("type", "custom")
    if kind is None or kind == "custom":
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
            raise _bad(where, "must have a name and an input_schema object")
        return
    if not isinstance(kind, str) or not policy.allows_tool(kind):
        raise _bad(f"{where}.type", f"{str(kind)[:64]!r} is a server tool not allowed on this gateway")


def _betas(header: str | None, policy: Policy) -> tuple[str, ...]:
    if header is None:
        return ()
    if len(header) > 1024 or not header.isprintable():
        raise BadRequest("invalid_request", "the anthropic-beta header is malformed")
    values = tuple(v.strip() for v in header.split(",") if v.strip())
    for value in values:
        if value not in policy.betas:
            raise BadRequest(
                "invalid_request",
                f"anthropic-beta {value[:64]!r} is not allowed on this gateway (ALLY_AI_ALLOWED_BETAS)",
            )
    return values


def _messages(value: object, *, server_blocks: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise _bad("messages", f"may hold at most {MAX_MESSAGES} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"messages[{i}]", "must be an object with role user or assistant")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise _bad(f"messages[{i}].{extra[0][:64]}", "is not a field of a message")
        content = message.get("content")
        if not isinstance(content, str):
            if not isinstance(content, list) or not all(_is_block(b) for b in content):
                raise _bad(f"messages[{i}].content", "must be a string or a list of content blocks with a type")
            for j, block in enumerate(content):
                if block["type"] not in CLIENT_BLOCKS and not server_blocks:
                    raise _bad(f"messages[{i}].content[{j}].type", "names a server tool's block, not allowed here")
        messages.append({"role": message["role"], "content": content})
    return messages


def _is_block(block: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(block, dict) and isinstance(block.get("type"), str)


def _is_text(block: object) -> bool:
    return _is_block(block) and block["type"] == "text" and isinstance(block.get("text"), str)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest("invalid_request", f"{field} {problem}")
