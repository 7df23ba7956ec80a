"""Reading an Anthropic Messages request for translation: what both fallbacks share.

Dropped on purpose (hints with no effect on the answer's meaning): `cache_control`,
`metadata`, `service_tier`, `diagnostics`, `inference_geo`, `speed`, a disabled
`thinking`, and earlier `thinking` / `redacted_thinking` blocks, which only
Anthropic can read. Anything else without
an equivalent raises `Untranslatable`, and the request is not sent.
"""

from __future__ import annotations

from typing import Any

from ai.errors import Untranslatable
from ai.request import MessagesRequest

DROPPED_BLOCKS = ("thinking", "redacted_thinking")


def check(request: MessagesRequest) -> None:
    """Refuse what neither fallback can express."""
    options = request.options
    # output_config can ask for a structured output format, which changes what the answer is.
    for name in ("mcp_servers", "container", "output_config"):
        if name in options:
            raise Untranslatable(name)
    thinking = options.get("thinking")
    if thinking and thinking.get("type") != "disabled":
        raise Untranslatable("thinking")
    for tool in options.get("tools") or ():
        if tool.get("type", "custom") not in ("custom", None):
            raise Untranslatable("server tools")
        if "input_examples" in tool:
            raise Untranslatable("tool input_examples")


def system_text(request: MessagesRequest) -> str | None:
    system = request.options.get("system")
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(block["text"] for block in system) or None


def blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if b["type"] not in DROPPED_BLOCKS]


def tool_result_text(block: dict[str, Any]) -> str:
    """A tool result's content as text; results with images or documents have no equivalent."""
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
        raise Untranslatable("tool_result with non-text content")
    return "".join(str(p.get("text", "")) for p in content)


def tool_names(request: MessagesRequest) -> dict[str, str]:
    """Tool-use id -> tool name, from the assistant turns (a tool result names only the id)."""
    names = {}
    for message in request.messages:
        if message["role"] == "assistant" and isinstance(message["content"], list):
            for block in message["content"]:
                if block["type"] == "tool_use":
                    names[str(block.get("id"))] = str(block.get("name"))
    return names


def tool_choice(request: MessagesRequest) -> tuple[str, str | None, bool]:
    """(`auto` | `any` | `tool` | `none`, the tool's name, parallel tool use disabled)."""
    choice = request.options.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise Untranslatable(f"tool_choice {str(kind)[:32]}")
    name = choice.get("name") if kind == "tool" else None
    return kind, name if isinstance(name, str) else None, bool(choice.get("disable_parallel_tool_use"))


def image_source(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
        raise Untranslatable("image source")
    return source
