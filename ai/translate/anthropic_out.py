"""Answers in Anthropic's format, built from another provider's answer.

`message` makes a whole Messages answer; `EventWriter` makes the event stream the
Messages API sends (`message_start`, `content_block_start` / `_delta` / `_stop`,
`message_delta` with usage, `message_stop`), in the order and shapes the official
`anthropic` SDK's stream reader expects. Blocks are written one after another: a
new block closes the one before it.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal")


def message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def tool_id() -> str:
    return "toolu_" + os.urandom(12).hex()


def message(
    model: str, content: list[dict[str, Any]], stop_reason: str, input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class EventWriter:
    """Anthropic stream events for one answer, fed with text and tool-call pieces as they come."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._index = -1
        self._open: str | None = None
        """The kind of the block being written: `text`, `tool_use`, or none."""
        self._tool_key: object = None
        self.started = False

    def start(self, input_tokens: int = 0) -> bytes:
        self.started = True
        head = message(self._model, [], "end_turn", input_tokens, 0) | {"stop_reason": None}
        return event("message_start", {"message": head})

    def text(self, text: str) -> bytes:
        if not text:
            return b""
        out = b"" if self._open == "text" else self._begin({"type": "text", "text": ""}, "text")
        return out + event("content_block_delta", {"index": self._index, "delta": {"type": "text_delta", "text": text}})

    def tool_start(self, key: object, tool_use_id: str, name: str) -> bytes:
        """A new tool call; `key` is how the provider names it in later argument pieces."""
        self._tool_key = key
        return self._begin({"type": "tool_use", "id": tool_use_id, "name": name, "input": {}}, "tool_use")

    def tool_args(self, key: object, partial_json: str) -> bytes:
        if not partial_json or self._open != "tool_use" or key != self._tool_key:
            return b""
        delta = {"type": "input_json_delta", "partial_json": partial_json}
        return event("content_block_delta", {"index": self._index, "delta": delta})

    def finish(self, stop_reason: str, input_tokens: int, output_tokens: int) -> bytes:
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        return (
            self._close()
            + event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage})
            + event("message_stop", {})
        )

    def _begin(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        return out + event("content_block_start", {"index": self._index, "content_block": block})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return event("content_block_stop", {"index": self._index})
