"""Anthropic Messages ⇄ OpenAI chat translation: requests, replies and streams.

Streams are checked three ways: the exact event order, every event against the SDK's own
``RawMessageStreamEvent`` (and the beta one Claude Code uses), and the SDK's real client
reading our SSE bytes and accumulating them into the same message ``from_openai`` builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.beta import BetaMessage, BetaRawMessageStreamEvent
from pydantic import TypeAdapter

from cortex import sse
from cortex.errors import InvalidRequest, NeuronUnavailable
from cortex.gateway.dialects.anthropic_reply import from_openai, prompt_too_long
from cortex.gateway.dialects.anthropic_request import IMAGE_PLACEHOLDER, to_openai, to_tokenize
from cortex.gateway.dialects.anthropic_stream import StreamTranslator
from cortex.protocol.anthropic import parse_count_tokens_request, parse_messages_request
from cortex.protocol.openai import ChatCompletion, ChatCompletionRequest, parse_request
from cortex.protocol.openai_reply import ChatCompletionChunk
from tests.protocol.test_anthropic import claude_code_request

RAW_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
BETA_EVENT: TypeAdapter[Any] = TypeAdapter(BetaRawMessageStreamEvent)
BASE: dict[str, Any] = {"model": "claude-x", "max_tokens": 100}


def _request(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = to_openai(parse_messages_request({**BASE, "messages": messages, **extra}), "qwen3-8b")
    parse_request(ChatCompletionRequest, json.dumps(body).encode())  # what a neuron accepts
    return body


def _roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


# --- to_openai: system folding ------------------------------------------------------------


def test_system_message_last_is_folded_into_the_leading_system() -> None:
    body = _request(
        [{"role": "user", "content": "hi"}, {"role": "system", "content": "git: clean"}]
    )
    assert body["messages"] == [
        {"role": "system", "content": "git: clean"},
        {"role": "user", "content": "hi"},
    ]


def test_every_system_text_is_folded_in_order_and_none_lost() -> None:
    system = [{"type": "text", "text": "A1"}, {"type": "text", "text": "A2", "cache_control": {}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "q1"},
        {
            "role": "system",
            "content": [{"type": "text", "text": "B1"}, {"type": "text", "text": "B2"}],
        },
        {"role": "assistant", "content": "a1"},
        {"role": "system", "content": "C"},
        {"role": "user", "content": "q2"},
        {"role": "system", "content": "D"},
    ]
    body = _request(messages, system=system)
    assert body["messages"][0] == {"role": "system", "content": "A1\n\nA2\n\nB1\n\nB2\n\nC\n\nD"}
    assert _roles(body) == ["system", "user", "assistant", "user"]


def test_system_string_and_unknown_roles() -> None:
    body = _request(
        [{"role": "user", "content": "q"}, {"role": "developer", "content": "d"}], system="S"
    )
    assert body["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
        {"role": "user", "content": "d"},
    ]


def test_no_system_anywhere_means_no_system_message() -> None:
    assert _roles(_request([{"role": "user", "content": "hi"}], system="")) == ["user"]


def test_claude_code_request_translates() -> None:
    body = to_openai(parse_messages_request(claude_code_request()), "qwen3-coder-30b")
    assert body["model"] == "qwen3-coder-30b"
    assert body["max_tokens"] == 32000
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert _roles(body) == ["system", "user"]
    system = body["messages"][0]["content"]
    assert system.startswith("x-anthropic-billing-header")
    assert system.endswith("gitStatus: clean")
    assert body["messages"][1]["content"].endswith("\n\nlist the files")
    assert len(body["tools"]) == 13
    parameters = body["tools"][0]["function"]["parameters"]
    assert parameters["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # adaptive thinking: templates think by default; nothing Anthropic-only leaks through.
    for key in ("chat_template_kwargs", "metadata", "context_management", "output_config"):
        assert key not in body
    parse_request(ChatCompletionRequest, json.dumps(body).encode())


# --- to_openai: content -------------------------------------------------------------------


def test_tool_history_translates() -> None:
    assistant = [
        {"type": "thinking", "thinking": "Look first.", "signature": ""},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Listing."},
        {"type": "tool_use", "id": "toolu_a", "name": "ls", "input": {"path": "."}},
        {"type": "tool_use", "id": "toolu_b", "name": "cat", "input": {"path": "ü.txt"}},
    ]
    user = [
        {"type": "text", "text": "and then?", "cache_control": {"type": "ephemeral"}},
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "a.txt"},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_b",
            "is_error": True,
            "content": [{"type": "text", "text": "no such"}, {"type": "text", "text": "file"}],
        },
    ]
    body = _request(
        [
            {"role": "user", "content": "list"},
            {"role": "assistant", "content": assistant},
            {"role": "user", "content": user},
        ]
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Listing.",
            "reasoning_content": "Look first.",
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "."}'},
                },
                {
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "cat", "arguments": '{"path": "ü.txt"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: no such\n\nfile"},
        {"role": "user", "content": "and then?"},
    ]


def test_tool_results_alone_make_no_user_message_and_empty_thinking_is_dropped() -> None:
    body = _request(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "", "signature": "c2ln"},
                    {"type": "tool_use", "id": "t1", "name": "ls", "input": {}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        ],
    }
    assert body["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": ""}]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": ""},
                    },
                ],
            },
            "messages.0.content.1.type",
        ),
        (
            {"role": "user", "content": [{"type": "document", "source": {"type": "text"}}]},
            "messages.0.content.0.type",
        ),
        (
            {"role": "system", "content": [{"type": "image", "source": {}}]},
            "messages.0.content.0.type",
        ),
    ],
)
def test_images_and_documents_are_a_400(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _request([message])
    assert info.value.status == 400
    assert info.value.param == param
    assert "text only" in info.value.message


def test_an_image_inside_a_tool_result_becomes_a_placeholder() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "screenshot:"}, {"type": "image", "source": {}}],
    }
    body = _request([{"role": "user", "content": [result]}])
    assert body["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": f"screenshot:\n\n{IMAGE_PLACEHOLDER}"}
    ]


TOOLS = [
    {"name": "ls", "description": "List.", "input_schema": {"type": "object"}},
    {"type": "web_search_20250305", "name": "web_search"},
]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "ls"}, {"type": "function", "function": {"name": "ls"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: object, parallel: object) -> None:
    body = _request([{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=choice)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "ls", "description": "List.", "parameters": {"type": "object"}},
        }
    ]
    assert body["tool_choice"] == expected
    assert body.get("parallel_tool_calls") == parallel


def test_only_hosted_tools_means_no_tools_at_all() -> None:
    body = _request(
        [{"role": "user", "content": "hi"}], tools=TOOLS[1:], tool_choice={"type": "any"}
    )
    assert "tools" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("thinking", "kwargs", "budget"),
    [
        ({"type": "disabled"}, {"enable_thinking": False, "thinking": False}, None),
        (
            {"type": "enabled", "budget_tokens": 4096},
            {"enable_thinking": True, "thinking": True},
            4096,
        ),
        ({"type": "adaptive"}, None, None),
        (None, None, None),
    ],
)
def test_thinking(
    thinking: dict[str, Any] | None, kwargs: dict[str, Any] | None, budget: int | None
) -> None:
    extra = {"thinking": thinking} if thinking else {}
    body = _request([{"role": "user", "content": "hi"}], **extra)
    assert body.get("chat_template_kwargs") == kwargs
    assert body.get("thinking_token_budget") == budget
    assert "budget_tokens" not in json.dumps(body)


def test_sampling_fields() -> None:
    body = _request(
        [{"role": "user", "content": "hi"}],
        stop_sequences=["END", "STOP"],
        temperature=0.2,
        top_p=0.9,
        top_k=20,
    )
    assert {k: body[k] for k in ("max_tokens", "stop", "temperature", "top_p", "top_k")} == {
        "max_tokens": 100,
        "stop": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
    }
    assert body["stream"] is False
    assert "stream_options" not in body


def test_to_tokenize() -> None:
    body = claude_code_request()
    del body["max_tokens"], body["stream"]
    body["thinking"] = {"type": "disabled"}
    tokenize = to_tokenize(parse_count_tokens_request(body), "qwen3-8b", "Qwen/Qwen3-8B")
    assert list(tokenize) == ["model", "source", "messages", "tools", "chat_template_kwargs"]
    assert tokenize["model"] == "qwen3-8b"
    assert tokenize["source"] == "Qwen/Qwen3-8B"
    assert [m["role"] for m in tokenize["messages"]] == ["system", "user"]
    assert len(tokenize["tools"]) == 13
    assert tokenize["chat_template_kwargs"] == {"enable_thinking": False, "thinking": False}
    plain = parse_count_tokens_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert to_tokenize(plain, "m", None) == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
    }


def test_prompt_too_long_wording() -> None:
    assert prompt_too_long(210345, 200000) == "prompt is too long: 210345 tokens > 200000 maximum"


# --- replies: one script, as an OpenAI stream and as the equivalent completion ------------


@dataclass
class Script:
    """What a neuron generated: steps, then how it stopped."""

    steps: list[tuple[Any, ...]]  # ("reasoning"|"text", s) | ("call", i, id, name) | ("args", i, s)
    finish: str = "stop"
    matched: str | int | None = None
    prompt: int = 17


def _chunk(
    delta: dict[str, Any] | None, used: int | None, prompt: int, **choice: Any
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-7f3a",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen3-8b",
        "choices": [],
    }
    if delta is not None:
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None, **choice}
        ]
    if used is not None:
        chunk["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": used,
            "total_tokens": prompt + used,
        }
    return chunk


def chunks(script: Script, *, continuous: bool = True) -> list[ChatCompletionChunk]:
    """The chunks our neurons send (``wire/chat_projection.py``), continuous usage if asked."""
    return [ChatCompletionChunk.model_validate(c) for c in raw_chunks(script, continuous)]


def raw_chunks(script: Script, continuous: bool) -> list[dict[str, Any]]:
    p = script.prompt
    out = [_chunk({"role": "assistant", "content": ""}, 0 if continuous else None, p)]
    for n, (kind, *rest) in enumerate(script.steps, 1):
        if kind in ("reasoning", "text"):
            key = {"reasoning": ("reasoning_content", "reasoning"), "text": ("content",)}[kind]
            delta: dict[str, Any] = dict.fromkeys(key, rest[0])
        elif kind == "call":
            function = {"name": rest[2], "arguments": ""}
            delta = {
                "tool_calls": [
                    {"index": rest[0], "id": rest[1], "type": "function", "function": function}
                ]
            }
        else:
            delta = {"tool_calls": [{"index": rest[0], "function": {"arguments": rest[1]}}]}
        out.append(_chunk(delta, n if continuous else None, p))
    used = len(script.steps)
    finish = {"finish_reason": script.finish, "stop_reason": script.matched}
    return [*out, _chunk({}, used if continuous else None, p, **finish), _chunk(None, used, p)]


def completion(script: Script) -> ChatCompletion:
    """The non-streaming ``chat.completion`` for the same generation."""
    return ChatCompletion.model_validate(raw_completion(script))


def raw_completion(script: Script) -> dict[str, Any]:
    text = "".join(s[1] for s in script.steps if s[0] == "text")
    reasoning = "".join(s[1] for s in script.steps if s[0] == "reasoning")
    calls = [
        {"id": s[2], "type": "function", "function": {"name": s[3], "arguments": ""}}
        for s in script.steps
        if s[0] == "call"
    ]
    for s in script.steps:
        if s[0] == "args":
            calls[s[1]]["function"]["arguments"] += s[2]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if reasoning:
        message |= {"reasoning_content": reasoning, "reasoning": reasoning}
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": script.finish,
        "stop_reason": script.matched,
        "logprobs": None,
    }
    used = len(script.steps)
    return {
        "id": "chatcmpl-7f3a",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen3-8b",
        "choices": [choice],
        "usage": {
            "prompt_tokens": script.prompt,
            "completion_tokens": used,
            "total_tokens": script.prompt + used,
        },
    }


def translate(script: Script, **options: Any) -> list[tuple[str, dict[str, Any]]]:
    translator = StreamTranslator("claude-x", **options)
    events = [event for chunk in chunks(script) for event in translator.feed(chunk)]
    return events + translator.finish()


def shape(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Event names, with the block or delta kind after a colon."""
    out = []
    for name, data in events:
        kind = data.get("content_block", data.get("delta", {})).get("type")
        out.append(f"{name}:{kind}" if name.startswith("content_block_") and kind else name)
    return out


def sdk_message(body: bytes, *, beta: bool = False, **create: Any) -> Any:
    """What the official SDK's own client makes of our response bytes."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if create.get("stream") else "application/json"
        return httpx2.Response(200, headers={"content-type": kind}, content=body)

    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://cortex.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    messages = client.beta.messages if beta else client.messages
    args: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if not create.get("stream"):
        return messages.create(**args)
    with messages.stream(**args) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def sse_bytes(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(sse.encode(data, name) for name, data in events)


REASONING = ("reasoning", "The user wants files. "), ("reasoning", "Use ls.")
TWO_CALLS = [
    ("call", 0, "call_a1", "ls"),
    ("args", 0, '{"pa'),
    ("args", 0, 'th": "."}'),
    ("call", 1, "call_b2", "cat"),
    ("args", 1, '{"path": '),
    ("args", 1, '"ü.txt"}'),
]
TEXT = [("text", "Hello"), ("text", ", world.")]

SCRIPTS = {
    "text": Script(TEXT),
    "reasoning-then-text": Script([*REASONING, *TEXT]),
    "reasoning-text-two-calls": Script(
        [*REASONING, ("text", "Looking."), *TWO_CALLS], "tool_calls"
    ),
    "reasoning-two-calls": Script([*REASONING, *TWO_CALLS], "tool_calls"),
    "length": Script([*REASONING, ("text", "Cut")], "length"),
    "stop-sequence": Script(TEXT, "stop", matched="END"),
    "stop-token": Script(TEXT, "stop", matched=151645),
}
BLOCK = ["content_block_start", "content_block_delta", "content_block_stop"]
THINKING = [
    "content_block_start:thinking",
    *["content_block_delta:thinking_delta"] * 2,
    "content_block_delta:signature_delta",
    "content_block_stop",
]
TEXT_BLOCK = [
    "content_block_start:text",
    *["content_block_delta:text_delta"] * 2,
    "content_block_stop",
]


def tool_block() -> list[str]:
    return [
        "content_block_start:tool_use",
        *["content_block_delta:input_json_delta"] * 2,
        "content_block_stop",
    ]


HEAD, TAIL = ["message_start", "ping"], ["message_delta", "message_stop"]
ORDERS = {
    "text": [*HEAD, *TEXT_BLOCK, *TAIL],
    "reasoning-then-text": [*HEAD, *THINKING, *TEXT_BLOCK, *TAIL],
    "reasoning-text-two-calls": [
        *HEAD,
        *THINKING,
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_stop",
        *tool_block(),
        *tool_block(),
        *TAIL,
    ],
    "reasoning-two-calls": [*HEAD, *THINKING, *tool_block(), *tool_block(), *TAIL],
    "length": [
        *HEAD,
        *THINKING,
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_stop",
        *TAIL,
    ],
    "stop-sequence": [*HEAD, *TEXT_BLOCK, *TAIL],
    "stop-token": [*HEAD, *TEXT_BLOCK, *TAIL],
}
STOPS = {
    "text": ("end_turn", None),
    "reasoning-then-text": ("end_turn", None),
    "reasoning-text-two-calls": ("tool_use", None),
    "reasoning-two-calls": ("tool_use", None),
    "length": ("max_tokens", None),
    "stop-sequence": ("stop_sequence", "END"),
    "stop-token": ("end_turn", None),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_stream_event_order_is_anthropics(name: str) -> None:
    events = translate(SCRIPTS[name])
    assert shape(events) == ORDERS[name]
    indexes = [data["index"] for _, data in events if "index" in data]
    assert indexes == sorted(indexes)  # blocks one after another, never interleaved
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["usage"] == {
        "input_tokens": 17,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert (delta["delta"]["stop_reason"], delta["delta"]["stop_sequence"]) == STOPS[name]
    used = len(SCRIPTS[name].steps)
    assert delta["usage"]["output_tokens"] == used
    assert delta["usage"]["input_tokens"] == 17


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_event_validates_against_the_sdk(name: str) -> None:
    for event, data in translate(SCRIPTS[name]):
        if event == "ping":
            assert data == {"type": "ping"}
            continue
        assert event == data["type"]
        RAW_EVENT.validate_python(data)
        BETA_EVENT.validate_python(data)


@pytest.mark.parametrize("beta", [False, True], ids=["messages", "beta"])
@pytest.mark.parametrize("name", SCRIPTS)
def test_sdk_accumulates_the_stream_into_from_openais_message(name: str, beta: bool) -> None:
    script = SCRIPTS[name]
    streamed = sdk_message(sse_bytes(translate(script)), beta=beta, stream=True)
    reply = from_openai(completion(script), "claude-x")
    model = BetaMessage if beta else Message
    assert streamed.model_dump(exclude_none=True) == model.model_validate(reply).model_dump(
        exclude_none=True
    )
    fetched = sdk_message(json.dumps(reply).encode(), beta=beta)
    assert fetched.model_dump(exclude_none=True) == streamed.model_dump(exclude_none=True)


def test_from_openai_blocks() -> None:
    reply = from_openai(completion(SCRIPTS["reasoning-text-two-calls"]), "claude-x")
    Message.model_validate(reply)
    assert reply["id"] == "msg_7f3a"
    assert reply["model"] == "claude-x"
    assert [b["type"] for b in reply["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, ls, cat = reply["content"]
    assert thinking["thinking"] == "The user wants files. Use ls."
    assert thinking["signature"]
    assert text == {"type": "text", "text": "Looking."}
    assert ls == {"type": "tool_use", "id": "toolu_a1", "name": "ls", "input": {"path": "."}}
    assert cat["input"] == {"path": "ü.txt"}
    assert cat["id"] == "toolu_b2"
    assert reply["usage"] == {
        "input_tokens": 17,
        "output_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_from_openai_text_only_and_unparsable_arguments() -> None:
    reply = from_openai(completion(Script(TEXT)), "claude-x")
    assert reply["content"] == [{"type": "text", "text": "Hello, world."}]
    assert reply["stop_reason"] == "end_turn"
    assert reply["stop_sequence"] is None
    broken = completion(Script([("call", 0, "c", "ls"), ("args", 0, "{oops")], "tool_calls"))
    assert from_openai(broken, "claude-x")["content"][0]["input"] == {"arguments": "{oops"}


def test_omitted_thinking_keeps_the_block_and_signature_but_no_text() -> None:
    script = SCRIPTS["reasoning-then-text"]
    events = translate(script, omit_thinking=True)
    assert "content_block_delta:thinking_delta" not in shape(events)
    streamed = sdk_message(sse_bytes(events), stream=True)
    reply = from_openai(completion(script), "claude-x", omit_thinking=True)
    assert reply["content"][0]["thinking"] == ""
    assert (
        reply["content"][0]["signature"]
        == from_openai(completion(script), "c")["content"][0]["signature"]
    )
    assert streamed.model_dump(exclude_none=True) == Message.model_validate(reply).model_dump(
        exclude_none=True
    )


def test_upstream_error_mid_stream() -> None:
    translator = StreamTranslator("claude-x", message_id="msg_fixed")
    sent = chunks(SCRIPTS["text"])
    events = [event for chunk in sent[:2] for event in translator.feed(chunk)]
    failed = {"error": {"message": "CUDA error", "type": "server_error"}}
    events += translator.feed(ChatCompletionChunk.model_validate(failed))
    assert shape(events) == [
        *HEAD,
        "content_block_start:text",
        "content_block_delta:text_delta",
        "error",
    ]
    assert events[0][1]["message"]["id"] == "msg_fixed"
    assert events[-1][1]["error"] == {"type": "api_error", "message": "CUDA error"}
    assert translator.feed(sent[2]) == []
    assert translator.finish() == []
    with pytest.raises(anthropic.APIStatusError, match="CUDA error") as info:
        sdk_message(sse_bytes(events), stream=True)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "api_error"


def test_error_from_the_gateway_itself() -> None:
    translator = StreamTranslator("claude-x")
    events = [translator.ping(), *translator.error(NeuronUnavailable("node gone"))]
    assert events == [
        ("ping", {"type": "ping"}),
        (
            "error",
            {
                "type": "error",
                "request_id": None,
                "error": {"type": "overloaded_error", "message": "node gone"},
            },
        ),
    ]


def test_without_continuous_usage_the_final_usage_still_counts() -> None:
    translator = StreamTranslator("claude-x")
    events = [
        e for chunk in chunks(SCRIPTS["text"], continuous=False) for e in translator.feed(chunk)
    ]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 0
    assert events[-2][1]["usage"]["input_tokens"] == 17
    assert events[-1][0] == "message_stop"
    assert translator.finish() == []


def test_finish_without_a_usage_chunk_or_any_chunk() -> None:
    translator = StreamTranslator("claude-x")
    events = [e for chunk in chunks(SCRIPTS["text"])[:-1] for e in translator.feed(chunk)]
    assert shape(events)[-1] == "content_block_stop"
    assert shape(translator.finish()) == TAIL
    empty = StreamTranslator("claude-x", message_id="msg_empty").finish()
    assert shape(empty) == [*HEAD, *TAIL]
    assert sdk_message(sse_bytes(empty), stream=True).content == []


def test_arguments_go_to_their_own_tool_block() -> None:
    translator = StreamTranslator("claude-x")
    script = Script([("call", 0, "c0", "ls"), ("call", 1, "c1", "cat"), ("args", 0, "{}")])
    events = [e for chunk in chunks(script) for e in translator.feed(chunk)]
    late = [d for n, d in events if n == "content_block_delta"]
    assert late == [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        }
    ]
