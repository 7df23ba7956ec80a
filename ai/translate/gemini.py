"""Anthropic Messages <-> the Gemini API (`generateContent`), in the `google-genai` SDK's shapes.

    system (string or text blocks)      -> config.system_instruction
    user / assistant turns              -> contents with role `user` / `model`
    text / image (base64) blocks        -> `text` / `inline_data` parts
    tool_use                            -> a `function_call` part (id, name, args)
    tool_result                         -> a `function_response` part ({"output": ...} or {"error": ...})
    tools (input_schema)                -> function_declarations (parameters_json_schema)
    tool_choice auto/any/tool/none      -> function_calling_config AUTO / ANY / ANY with the name / NONE
    max_tokens, temperature, top_p, top_k, stop_sequences (at most 5) -> their generation_config twins
    finishReason STOP/MAX_TOKENS/SAFETY… -> end_turn (tool_use with calls) / max_tokens / refusal
    usage prompt / candidates + thoughts -> input / output tokens

The first function call of a replayed model turn carries Gemini's documented
placeholder thought signature: the history did not come from Gemini, and Gemini 3
refuses function calls without one. Not expressible (the request is not sent):
image URLs, documents and other blocks, `disable_parallel_tool_use`, more than 5
stop sequences, tool results holding images.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from ai.errors import Untranslatable
from ai.request import MessagesRequest
from ai.translate import anthropic_in
from ai.translate.anthropic_out import EventWriter, message, tool_id

MAX_STOP = 5
PLACEHOLDER_SIGNATURE = b"skip_thought_signature_validator"
_REFUSALS = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_MODES = {"auto": "AUTO", "any": "ANY", "tool": "ANY", "none": "NONE"}


def request(ask: MessagesRequest, model: str) -> dict[str, Any]:
    """`models.generate_content` arguments: model, contents, config."""
    anthropic_in.check(ask)
    options = ask.options
    # The SDK's own extras stay off: it must neither run tools itself nor chain requests.
    config: dict[str, Any] = {
        "max_output_tokens": ask.max_tokens,
        "automatic_function_calling": {"disable": True},
        "automatic_continuation": False,
    }
    system = anthropic_in.system_text(ask)
    if system:
        config["system_instruction"] = {"parts": [{"text": system}]}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if ours in options:
            config[theirs] = options[ours]
    stop = options.get("stop_sequences")
    if stop:
        if len(stop) > MAX_STOP:
            raise Untranslatable("more than 5 stop_sequences")
        config["stop_sequences"] = list(stop)
    if options.get("tools"):
        config |= _tools(ask)
    names = anthropic_in.tool_names(ask)
    contents = [_content(turn, names) for turn in ask.messages]
    return {"model": model, "contents": [c for c in contents if c["parts"]], "config": config}


def _tools(ask: MessagesRequest) -> dict[str, Any]:
    declarations = [
        {
            "name": tool["name"],
            **({"description": tool["description"]} if isinstance(tool.get("description"), str) else {}),
            "parameters_json_schema": tool["input_schema"],
        }
        for tool in ask.options["tools"]
    ]
    kind, name, serial = anthropic_in.tool_choice(ask)
    if serial:
        raise Untranslatable("disable_parallel_tool_use")
    calling: dict[str, Any] = {"mode": _MODES[kind]}
    if kind == "tool":
        calling["allowed_function_names"] = [name]
    return {"tools": [{"function_declarations": declarations}], "tool_config": {"function_calling_config": calling}}


def _content(turn: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    model = turn["role"] == "assistant"
    parts = [_part(block, names, model) for block in anthropic_in.blocks(turn["content"])]
    if model:
        calls = [p for p in parts if "function_call" in p]
        if calls:
            calls[0]["thought_signature"] = PLACEHOLDER_SIGNATURE
    return {"role": "model" if model else "user", "parts": parts}


def _part(block: dict[str, Any], names: dict[str, str], model: bool) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"text": str(block.get("text", ""))}
    if kind == "image" and not model:
        return {"inline_data": _inline(block)}
    if kind == "tool_use" and model:
        call = {"id": str(block.get("id")), "name": block.get("name"), "args": block.get("input") or {}}
        return {"function_call": call}
    if kind == "tool_result" and not model:
        use_id = str(block.get("tool_use_id"))
        if use_id not in names:
            raise Untranslatable("tool_result without its tool_use")
        text = anthropic_in.tool_result_text(block)
        response = {"error": text} if block.get("is_error") else {"output": text}
        return {"function_response": {"id": use_id, "name": names[use_id], "response": response}}
    raise Untranslatable(f"{kind[:32]} blocks")


def _inline(block: dict[str, Any]) -> dict[str, Any]:
    source = anthropic_in.image_source(block)
    if source["type"] != "base64":
        raise Untranslatable("image URLs")
    try:
        data = base64.b64decode(str(source.get("data")), validate=True)
    except (binascii.Error, ValueError):
        raise Untranslatable("image data that is not base64") from None
    return {"mime_type": source.get("media_type"), "data": data}


def stop_reason(finish_reason: str | None, called: bool) -> str:
    if finish_reason == "MAX_TOKENS":
        return "max_tokens"
    if finish_reason in _REFUSALS:
        return "refusal"
    return "tool_use" if called else "end_turn"


def usage(metadata: dict[str, Any] | None) -> tuple[int, int]:
    """(input, output): thoughts are output the model was billed for, tool-use prompts input."""
    m = metadata or {}
    return (
        (m.get("prompt_token_count") or 0) + (m.get("tool_use_prompt_token_count") or 0),
        (m.get("candidates_token_count") or 0) + (m.get("thoughts_token_count") or 0),
    )


def _parts(response: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    if not response.get("candidates") and (response.get("prompt_feedback") or {}).get("block_reason"):
        return [], "SAFETY"  # the prompt itself was blocked: no candidate at all
    candidate = (response.get("candidates") or [{}])[0]
    parts = ((candidate.get("content") or {}).get("parts")) or []
    return [p for p in parts if not p.get("thought")], candidate.get("finish_reason")


def answer(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A `GenerateContentResponse` (as the SDK dumps it) -> an Anthropic message."""
    parts, finish = _parts(response)
    content: list[dict[str, Any]] = []
    for part in parts:
        if part.get("text"):
            content.append({"type": "text", "text": part["text"]})
        elif part.get("function_call"):
            call = part["function_call"]
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or tool_id(),
                    "name": call.get("name"),
                    "input": call.get("args") or {},
                }
            )
    called = any(block["type"] == "tool_use" for block in content)
    return message(model, content, stop_reason(finish, called), *usage(response.get("usage_metadata")))


class StreamTranslator:
    """`GenerateContentResponse` chunks -> Anthropic events. Gemini sends each function call whole."""

    def __init__(self, model: str) -> None:
        self._writer = EventWriter(model)
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._calls = 0

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self._writer.started else self._writer.start()
        parts, finish = _parts(chunk)
        for part in parts:
            if part.get("text"):
                out += self._writer.text(part["text"])
            elif part.get("function_call"):
                call = part["function_call"]
                self._calls += 1
                out += self._writer.tool_start(self._calls, call.get("id") or tool_id(), call.get("name") or "")
                out += self._writer.tool_args(self._calls, orjson.dumps(call.get("args") or {}).decode())
        self._finish = finish or self._finish
        self._usage = chunk.get("usage_metadata") or self._usage
        return out

    @property
    def finished(self) -> bool:
        return self._finish is not None

    def end(self) -> bytes:
        return self._writer.finish(stop_reason(self._finish, self._calls > 0), *usage(self._usage))
