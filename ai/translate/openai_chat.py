"""Anthropic Messages <-> OpenAI Chat Completions.

    system (string or text blocks)      -> a `system` message
    text / image (base64, url) blocks   -> `text` / `image_url` parts (base64 as a data URL)
    assistant text + tool_use           -> `content` + `tool_calls` (arguments as JSON text)
    tool_result                         -> a `tool` message per result, before the user's other parts
    tools (input_schema)                -> `function` tools (`parameters`)
    tool_choice auto/any/tool/none      -> auto / required / the function / none
    disable_parallel_tool_use           -> parallel_tool_calls: false
    max_tokens, temperature, top_p      -> max_completion_tokens, temperature, top_p
    stop_sequences (at most 4)          -> stop
    finish_reason stop/length/tool_calls/content_filter -> end_turn/max_tokens/tool_use/refusal
    usage prompt/completion tokens      -> input/output tokens

Not expressible (the request is not sent): `top_k`, more than 4 stop sequences,
documents and other non-text, non-image blocks, tool results holding images.
"""

from __future__ import annotations

from typing import Any

import orjson

from ai.errors import Untranslatable
from ai.request import MessagesRequest
from ai.translate import anthropic_in
from ai.translate.anthropic_out import EventWriter, message

MAX_STOP = 4
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}


def request(ask: MessagesRequest, model: str) -> dict[str, Any]:
    """The `chat.completions.create` arguments (the request body) for `ask` on `model`."""
    anthropic_in.check(ask)
    options = ask.options
    if "top_k" in options:
        raise Untranslatable("top_k")
    params: dict[str, Any] = {"model": model, "messages": _messages(ask), "max_completion_tokens": ask.max_tokens}
    for name in ("temperature", "top_p"):
        if name in options:
            params[name] = options[name]
    stop = options.get("stop_sequences")
    if stop:
        if len(stop) > MAX_STOP:
            raise Untranslatable("more than 4 stop_sequences")
        params["stop"] = list(stop)
    if options.get("tools"):
        params |= _tools(ask)
    if ask.stream:
        params |= {"stream": True, "stream_options": {"include_usage": True}}
    return params


def _tools(ask: MessagesRequest) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                **({"description": tool["description"]} if isinstance(tool.get("description"), str) else {}),
                "parameters": tool["input_schema"],
            },
        }
        for tool in ask.options["tools"]
    ]
    kind, name, serial = anthropic_in.tool_choice(ask)
    choice: object = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if kind == "tool":
        choice = {"type": "function", "function": {"name": name}}
    params: dict[str, Any] = {"tools": tools, "tool_choice": choice}
    if serial:
        params["parallel_tool_calls"] = False
    return params


def _messages(ask: MessagesRequest) -> list[dict[str, Any]]:
    system = anthropic_in.system_text(ask)
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for turn in ask.messages:
        content = anthropic_in.blocks(turn["content"])
        out += _assistant(content) if turn["role"] == "assistant" else _user(content)
    return out


def _user(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "tool_result":
            text = anthropic_in.tool_result_text(block)
            text = f"Error: {text}" if block.get("is_error") else text
            tools.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text})
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        else:
            raise Untranslatable(f"{kind[:32]} blocks")
    if not parts:
        return tools
    only_text = all(p["type"] == "text" for p in parts)
    user = "".join(p["text"] for p in parts) if only_text and len(parts) == 1 else parts
    return [*tools, {"role": "user", "content": user}]


def _image_url(block: dict[str, Any]) -> str:
    source = anthropic_in.image_source(block)
    if source["type"] == "url":
        return str(source.get("url"))
    return f"data:{source.get('media_type')};base64,{source.get('data')}"


def _assistant(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if block["type"] == "text":
            text.append(str(block.get("text", "")))
        elif block["type"] == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(block.get("id")),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        else:
            raise Untranslatable(f"{block['type'][:32]} blocks")
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        turn["tool_calls"] = calls
    return [turn]


def stop_reason(finish_reason: str | None) -> str:
    if finish_reason == "content_filter":
        return "refusal"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def answer(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """A `chat.completion` (as JSON) -> an Anthropic message."""
    choice = (completion.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments")),
            }
        )
    usage = completion.get("usage") or {}
    return message(
        model,
        content,
        stop_reason(choice.get("finish_reason")),
        usage.get("prompt_tokens") or 0,
        usage.get("completion_tokens") or 0,
    )


def _arguments(text: object) -> dict[str, Any]:
    """Tool arguments as an object; a model that wrote broken JSON gets its text kept, not lost."""
    try:
        value = orjson.loads(text) if isinstance(text, str) and text else {}
    except orjson.JSONDecodeError:
        return {"_unparsed_arguments": text}
    return value if isinstance(value, dict) else {"_value": value}


class StreamTranslator:
    """`chat.completion.chunk`s (as JSON) -> Anthropic events."""

    def __init__(self, model: str) -> None:
        self._writer = EventWriter(model)
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self._writer.started else self._writer.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            out += self._writer.text(delta.get("content") or "")
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        function = call.get("function") or {}
        key = call.get("index", 0)
        out = b""
        if call.get("id"):
            out += self._writer.tool_start(key, call["id"], function.get("name") or "")
        return out + self._writer.tool_args(key, function.get("arguments") or "")

    @property
    def finished(self) -> bool:
        return self._finish is not None

    def end(self) -> bytes:
        usage = self._usage
        return self._writer.finish(
            stop_reason(self._finish), usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        )
