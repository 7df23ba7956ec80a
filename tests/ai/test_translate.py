"""The translation tables, one row per feature, both ways, for OpenAI Chat Completions and Gemini."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ai.errors import Untranslatable
from ai.request import MessagesRequest, parse
from ai.translate import gemini, openai_chat

PNG = "iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOL = {"name": "weather", "description": "Weather", "input_schema": SCHEMA}
USE = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}
SIGNATURE = gemini.PLACEHOLDER_SIGNATURE


def ask(messages: list[dict[str, Any]] | str = "hi", **options: Any) -> MessagesRequest:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return parse({"model": "claude", "max_tokens": 100, "messages": messages, **options})


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


TOOL_TURNS = [user({"type": "text", "text": "Weather?"}), assistant({"type": "text", "text": "Let me see."}, USE)]
TOOL_TURNS.append(user(RESULT, {"type": "text", "text": "thanks"}))

# (what is asked, the OpenAI messages and extra parameters, the Gemini contents and extra config)
REQUESTS: dict[str, tuple[MessagesRequest, Any, Any]] = {
    "text": (ask(), ([{"role": "user", "content": "hi"}], {}), ([{"role": "user", "parts": [{"text": "hi"}]}], {})),
    "system as text blocks": (
        ask(system=[{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]),
        ([{"role": "system", "content": "Be\n\nbrief."}, {"role": "user", "content": "hi"}], {}),
        ([{"role": "user", "parts": [{"text": "hi"}]}], {"system_instruction": {"parts": [{"text": "Be\n\nbrief."}]}}),
    ),
    "image": (
        ask([user({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}})]),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}],
                }
            ],
            {},
        ),
        (
            [{"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": b"\x89PNG\r\n\x1a\n"}}]}],
            {},
        ),
    ),
    "sampling and stops": (
        ask(temperature=0.5, top_p=0.9, stop_sequences=["END"]),
        ([{"role": "user", "content": "hi"}], {"temperature": 0.5, "top_p": 0.9, "stop": ["END"]}),
        ([{"role": "user", "parts": [{"text": "hi"}]}], {"temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"]}),
    ),
    "tools, tool_use and tool_result": (
        ask(TOOL_TURNS, tools=[TOOL], tool_choice={"type": "any"}),
        (
            [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "Let me see.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "user", "content": "thanks"},
            ],
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "weather", "description": "Weather", "parameters": SCHEMA},
                    }
                ],
                "tool_choice": "required",
            },
        ),
        (
            [
                {"role": "user", "parts": [{"text": "Weather?"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "Let me see."},
                        {
                            "function_call": {"id": "toolu_1", "name": "weather", "args": {"city": "Paris"}},
                            "thought_signature": SIGNATURE,
                        },
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"function_response": {"id": "toolu_1", "name": "weather", "response": {"output": "sunny"}}},
                        {"text": "thanks"},
                    ],
                },
            ],
            {
                "tools": [
                    {
                        "function_declarations": [
                            {"name": "weather", "description": "Weather", "parameters_json_schema": SCHEMA}
                        ]
                    }
                ],
                "tool_config": {"function_calling_config": {"mode": "ANY"}},
            },
        ),
    ),
    "a named tool, an error result": (
        ask(
            [*TOOL_TURNS[:2], user({**RESULT, "is_error": True})],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "weather"},
        ),
        (
            [{"role": "tool", "tool_call_id": "toolu_1", "content": "Error: sunny"}],
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
        ),
        (
            [
                {
                    "role": "user",
                    "parts": [
                        {"function_response": {"id": "toolu_1", "name": "weather", "response": {"error": "sunny"}}}
                    ],
                }
            ],
            {"tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["weather"]}}},
        ),
    ),
    "thinking blocks and cache_control are dropped": (
        ask(
            [
                user({"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}),
                assistant({"type": "thinking", "thinking": "...", "signature": "s"}, {"type": "text", "text": "yo"}),
            ],
            metadata={"user_id": "u"},
        ),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}),
        ([{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yo"}]}], {}),
    ),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_requests_to_openai(case: str):
    request, (messages, extra), _ = REQUESTS[case]
    params = openai_chat.request(request, "gpt-x")
    tail = params["messages"][-len(messages) :]
    assert tail == messages
    assert params["model"] == "gpt-x" and params["max_completion_tokens"] == 100
    assert {k: params[k] for k in extra} == extra


@pytest.mark.parametrize("case", list(REQUESTS))
def test_requests_to_gemini(case: str):
    request, _, (contents, extra) = REQUESTS[case]
    params = gemini.request(request, "gemini-x")
    assert params["contents"][-len(contents) :] == contents
    config = params["config"]
    assert config["max_output_tokens"] == 100 and config["automatic_function_calling"] == {"disable": True}
    assert {k: config[k] for k in extra} == extra


DOCUMENT = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
IMAGE_URL = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
# (what is asked, whether OpenAI can express it, whether Gemini can)
EXPRESSIBLE: dict[str, tuple[MessagesRequest, bool, bool]] = {
    "top_k": (ask(top_k=5), False, True),
    "thinking enabled": (ask(thinking={"type": "enabled", "budget_tokens": 1024}), False, False),
    "thinking disabled": (ask(thinking={"type": "disabled"}), True, True),
    "structured output": (ask(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}), False, False),
    "speed and geography": (ask(speed="fast", inference_geo="us", diagnostics={}), True, True),
    "documents": (ask([user(DOCUMENT)]), False, False),
    "image URLs": (ask([user(IMAGE_URL)]), True, False),
    "5 stop sequences": (ask(stop_sequences=["a", "b", "c", "d", "e"]), False, True),
    "6 stop sequences": (ask(stop_sequences=["a", "b", "c", "d", "e", "f"]), False, False),
    "serial tool use": (
        ask(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
        True,
        False,
    ),
    "image tool results": (
        ask([*TOOL_TURNS[:2], user({"type": "tool_result", "tool_use_id": "toolu_1", "content": [IMAGE_URL]})]),
        False,
        False,
    ),
    "a tool result without its call": (ask([user(RESULT)]), True, False),
}


@pytest.mark.parametrize("case", list(EXPRESSIBLE))
def test_what_has_no_equivalent_is_refused_before_sending(case: str):
    request, for_openai, for_gemini = EXPRESSIBLE[case]
    for translate, expressible in ((openai_chat.request, for_openai), (gemini.request, for_gemini)):
        if expressible:
            translate(request, "m")
        else:
            with pytest.raises(Untranslatable):
                translate(request, "m")


def completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
# (an OpenAI answer, a Gemini answer, the Anthropic content and stop reason both become)
ANSWERS: dict[str, tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], str]] = {
    "text": (
        completion({"role": "assistant", "content": "Hi"}, "stop"),
        {"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finish_reason": "STOP"}]},
        [{"type": "text", "text": "Hi"}],
        "end_turn",
    ),
    "cut at max_tokens": (
        completion({"role": "assistant", "content": "Hi"}, "length"),
        {"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finish_reason": "MAX_TOKENS"}]},
        [{"type": "text", "text": "Hi"}],
        "max_tokens",
    ),
    "refused": (
        completion({"role": "assistant", "content": None}, "content_filter"),
        {"candidates": [{"finish_reason": "SAFETY"}]},
        [],
        "refusal",
    ),
    "a blocked prompt": (
        completion({"role": "assistant", "content": None}, "content_filter"),
        {"prompt_feedback": {"block_reason": "PROHIBITED_CONTENT"}},
        [],
        "refusal",
    ),
    "a tool call": (
        completion({"role": "assistant", "content": None, "tool_calls": [CALL]}, "tool_calls"),
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"text": "thinking…", "thought": True},
                            {"function_call": {"id": "call_1", "name": "weather", "args": {"city": "Paris"}}},
                        ]
                    },
                    "finish_reason": "STOP",
                }
            ]
        },
        [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
        "tool_use",
    ),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_answers_become_anthropic_messages(case: str):
    from_openai, from_gemini, content, stop_reason = ANSWERS[case]
    usage = {"prompt_token_count": 9, "candidates_token_count": 3, "thoughts_token_count": 1}
    for message in (openai_chat.answer(from_openai, "m"), gemini.answer({**from_gemini, "usage_metadata": usage}, "m")):
        assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == "m"
        assert message["id"].startswith("msg_")
        assert (message["content"], message["stop_reason"]) == (content, stop_reason)
        assert message["usage"] == {"input_tokens": 9, "output_tokens": 4}


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_an_openai_stream_with_a_tool_call_becomes_anthropic_events():
    translator = openai_chat.StreamTranslator("gpt-x")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    pieces = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking"}),
        chunk({"tool_calls": [start]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 8}},
    ]
    raw = b"".join(translator.feed(p) for p in pieces) + translator.end()
    seen = events(raw)
    assert [name for name, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert seen[4][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    assert "".join(
        e["delta"]["partial_json"] for n, e in seen if e.get("index") == 1 and n == "content_block_delta"
    ) == ('{"city": "Paris"}')
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert seen[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 8}


def test_a_gemini_stream_with_a_function_call_becomes_anthropic_events():
    translator = gemini.StreamTranslator("gemini-x")
    call = {"function_call": {"name": "weather", "args": {"city": "Paris"}}}
    pieces: list[dict[str, Any]] = [
        {"candidates": [{"content": {"parts": [{"text": "Checking"}]}}], "usage_metadata": {"prompt_token_count": 5}},
        {"candidates": [{"content": {"parts": [call]}, "finish_reason": "STOP"}]},
        {"usage_metadata": {"prompt_token_count": 5, "candidates_token_count": 8}},
    ]
    raw = b"".join(translator.feed(p) for p in pieces) + translator.end()
    seen = events(raw)
    tool = seen[4][1]["content_block"]
    assert tool["type"] == "tool_use" and tool["id"].startswith("toolu_") and tool["name"] == "weather"
    assert seen[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert seen[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 8}
    assert seen[-1][0] == "message_stop"
