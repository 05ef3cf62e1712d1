"""Responses API requests: validation (bad fields are 400s naming them) and chat conversion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.responses_to_chat import flat_tool_name, to_chat
from cortex.protocol.openai import ChatMessage, NamedToolChoice
from cortex.protocol.responses import ResponsesRequest, parse_responses_request


def _parse(body: object) -> ResponsesRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_responses_request(raw)


def _roles(messages: list[ChatMessage]) -> list[tuple[str, Any]]:
    return [(m.role, m.content) for m in messages]


OBJECT = {"type": "object", "properties": {}}

CODEX: dict[str, Any] = {
    "model": "qwen3-coder",
    "instructions": "You are Codex, a coding agent.",
    "input": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "developer",
            "content": [{"type": "input_text", "text": "<permissions>sandboxed</permissions>"}],
        },
        {
            "type": "message",
            "id": "msg_2",
            "role": "user",
            "content": [{"type": "input_text", "text": "List the files."}],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Plan: ls."}],
            "content": [{"type": "reasoning_text", "text": "I should run ls."}],
            "encrypted_content": None,
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "shell",
            "arguments": '{"command": ["ls"]}',
            "status": "completed",
        },
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_2",
            "name": "read",
            "namespace": "mcp__files__",
            "arguments": '{"path": "a.txt"}',
            "status": "completed",
        },
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "a.txt"},
        {
            "type": "function_call_output",
            "id": "fco_2",
            "call_id": "call_2",
            "output": [
                {"type": "input_text", "text": "hello "},
                {"type": "input_text", "text": "!"},
            ],
        },
        {
            "type": "message",
            "id": "msg_3",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "One file.", "annotations": []}],
        },
        {
            "type": "message",
            "id": "msg_4",
            "role": "user",
            "content": [{"type": "input_text", "text": "Thanks."}],
        },
    ],
    "tools": [
        {
            "type": "function",
            "name": "shell",
            "description": "Runs a command.",
            "strict": False,
            "parameters": OBJECT,
        },
        {
            "type": "namespace",
            "name": "mcp__files__",
            "description": "Tools of the files MCP server.",
            "tools": [
                {"type": "function", "name": "read", "description": "Read.", "parameters": OBJECT},
                {"type": "function", "name": "write", "strict": False, "parameters": OBJECT},
            ],
        },
        {"type": "web_search", "external_web_access": False},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "0199-session",
    "client_metadata": {"x-codex-turn": "1"},
    "text": {"verbosity": "low"},
}


def test_string_input_is_one_user_message_after_the_instructions() -> None:
    request = _parse({"model": "m", "input": "hi", "instructions": "Be brief."})
    conversation = to_chat(request)
    assert _roles(conversation.messages) == [("system", "Be brief."), ("user", "hi")]
    assert _roles(conversation.history) == [("user", "hi")]
    assert conversation.tools is None
    assert conversation.ignored_tools == []


def test_codex_request_parses_and_converts() -> None:
    request = _parse(CODEX)
    assert request.store is False
    assert request.include == ["reasoning.encrypted_content"]
    assert request.prompt_cache_key == "0199-session"
    conversation = to_chat(request)
    assert _roles(conversation.messages) == [
        ("system", "You are Codex, a coding agent.\n\n<permissions>sandboxed</permissions>"),
        ("user", "List the files."),
        ("assistant", None),
        ("tool", "a.txt"),
        ("tool", "hello !"),
        ("assistant", "One file."),
        ("user", "Thanks."),
    ]
    calls = conversation.messages[2]
    assert calls.reasoning_content == "I should run ls."
    assert calls.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls.tool_calls] == [
        ("call_1", "shell", '{"command": ["ls"]}'),
        ("call_2", "mcp__files__read", '{"path": "a.txt"}'),
    ]
    assert [m.tool_call_id for m in conversation.messages[3:5]] == ["call_1", "call_2"]
    assert conversation.tools is not None
    assert [t.function.name for t in conversation.tools] == [
        "shell",
        "mcp__files__read",
        "mcp__files__write",
    ]
    assert conversation.tools[0].function.strict is False
    assert conversation.tool_names == {
        "mcp__files__read": ("mcp__files__", "read"),
        "mcp__files__write": ("mcp__files__", "write"),
    }
    assert conversation.ignored_tools == ["web_search", "custom"]
    assert conversation.tool_choice == "auto"
    chat = conversation.chat_request(request.model, stream=True)
    assert chat.stream is True
    assert chat.parallel_tool_calls is True
    assert chat.tools == conversation.tools


def test_every_item_kind() -> None:
    request = _parse(
        {
            "model": "m",
            "input": [
                {"role": "system", "content": "Rules."},
                {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "S1"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "S2"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "b"},
                        {"type": "refusal", "refusal": " no"},
                    ],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
                {"type": "reasoning", "summary": [], "content": [{"type": "text", "text": "lost"}]},
                {"type": "message", "role": "user", "content": "c"},
                {"type": "item_reference", "id": "msg_old"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            ],
            "tools": [{"type": "function", "name": "f"}],
        }
    )
    conversation = to_chat(request)
    assert _roles(conversation.messages) == [
        ("system", "Rules."),
        ("user", "a"),
        ("assistant", "b no"),
        ("tool", "done"),
        ("user", "c"),
    ]
    assistant = conversation.messages[2]
    assert assistant.reasoning_content == "S1\n\nS2"
    assert assistant.tool_calls is not None
    assert assistant.tool_calls[0].function.name == "f"
    assert conversation.ignored_items == ["item_reference", "web_search_call"]


def test_history_goes_after_new_instructions_and_before_the_new_items() -> None:
    history = [ChatMessage(role="user", content="1"), ChatMessage(role="assistant", content="2")]
    request = _parse({"model": "m", "input": "3", "instructions": "I"})
    conversation = to_chat(request, history)
    assert _roles(conversation.messages) == [
        ("system", "I"),
        ("user", "1"),
        ("assistant", "2"),
        ("user", "3"),
    ]
    assert _roles(conversation.history) == _roles(conversation.messages)[1:]


def test_sampling_fields_map_to_chat() -> None:
    request = _parse(
        {
            "model": "m",
            "input": "x",
            "max_output_tokens": 32,
            "temperature": 0.2,
            "top_p": 0.5,
            "top_k": 20,
            "min_p": 0.1,
            "seed": 7,
            "stop": ["END"],
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.1,
        }
    )
    chat = to_chat(request).chat_request("m")
    assert chat.completion_limit == 32
    assert (chat.temperature, chat.top_p, chat.top_k, chat.min_p, chat.seed) == (
        0.2,
        0.5,
        20,
        0.1,
        7,
    )
    assert chat.stop_strings == ("END",)
    assert (chat.presence_penalty, chat.frequency_penalty) == (0.5, -0.5)
    assert chat.repetition_penalty == 1.1


def test_tool_choice_translates() -> None:
    base = {"model": "m", "input": "x", "tools": CODEX["tools"]}
    by_name = to_chat(_parse({**base, "tool_choice": {"type": "function", "name": "shell"}}))
    assert by_name.tool_choice == NamedToolChoice.model_validate({"function": {"name": "shell"}})
    nested = to_chat(_parse({**base, "tool_choice": {"type": "function", "name": "read"}}))
    assert isinstance(nested.tool_choice, NamedToolChoice)
    assert nested.tool_choice.function.name == "mcp__files__read"
    allowed = {"type": "allowed_tools", "mode": "required", "tools": []}
    assert to_chat(_parse({**base, "tool_choice": allowed})).tool_choice == "required"
    hosted = to_chat(_parse({**base, "tool_choice": {"type": "web_search"}}))
    assert hosted.tool_choice is None
    with pytest.raises(InvalidRequest) as info:
        to_chat(_parse({**base, "tool_choice": {"type": "function", "name": "nope"}}))
    assert info.value.param == "tool_choice.name"


def test_namespace_names() -> None:
    assert flat_tool_name("mcp__files__", "read") == "mcp__files__read"
    assert flat_tool_name("crm", "lookup") == "crm__lookup"
    assert flat_tool_name(None, "shell") == "shell"


def test_duplicate_tool_names_are_a_400() -> None:
    tools = [
        {"type": "function", "name": "crm__lookup"},
        {"type": "namespace", "name": "crm", "tools": [{"type": "function", "name": "lookup"}]},
    ]
    with pytest.raises(InvalidRequest) as info:
        to_chat(_parse({"model": "m", "input": "x", "tools": tools}))
    assert info.value.param == "tools.1.tools.0.name"


GOOD = {"model": "m", "input": "x"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ([1, 2], None),
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({**GOOD, "input": 5}, "input"),
        ({**GOOD, "max_output_tokens": "5"}, "max_output_tokens"),
        ({**GOOD, "max_output_tokens": 0}, "max_output_tokens"),
        ({**GOOD, "max_output_tokens": 2**64}, "max_output_tokens"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "temperature": "0.5"}, "temperature"),
        ({**GOOD, "top_p": 0}, "top_p"),
        ({**GOOD, "top_k": 2**63}, "top_k"),
        ({**GOOD, "seed": 2**64}, "seed"),
        ({**GOOD, "repetition_penalty": 0}, "repetition_penalty"),
        ({**GOOD, "stream": "yes"}, "stream"),
        ({**GOOD, "metadata": {"k": 1}}, "metadata.k"),
        ({**GOOD, "reasoning": {"effort": 5}}, "reasoning.effort"),
        ({**GOOD, "tool_choice": "sometimes"}, "tool_choice"),
        ({**GOOD, "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({**GOOD, "input": [{"role": "wizard", "content": "x"}]}, "input.0.role"),
        ({**GOOD, "input": [{"content": "x"}]}, "input.0.type"),
        ({**GOOD, "input": [{"role": "user", "content": 5}]}, "input.0.content"),
        (
            {**GOOD, "input": [{"role": "user", "content": [{"type": "audio"}]}]},
            "input.0.content.0.type",
        ),
        (
            {**GOOD, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input.0.call_id",
        ),
        (
            {**GOOD, "input": [{"type": "function_call_output", "call_id": "c", "output": 1}]},
            "input.0.output",
        ),
        ({**GOOD, "tools": [{"name": "f"}]}, "tools.0.type"),
        ({**GOOD, "tools": [{"type": "function", "name": ""}]}, "tools.0.name"),
        (
            {
                **GOOD,
                "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function"}]}],
            },
            "tools.0.tools.0.name",
        ),
    ],
)
def test_bad_requests_are_invalid_request_naming_the_field(body: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        _parse(body)
    assert info.value.status == 400
    assert info.value.param == param
    if param:
        assert info.value.message.startswith(f"{param}: ")


def test_unknown_fields_and_hosted_tools_are_accepted() -> None:
    request = _parse(
        {**GOOD, "service_tier": "flex", "tools": [{"type": "mcp", "server_label": "s"}]}
    )
    assert to_chat(request).ignored_tools == ["mcp"]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            },
            "input.0.content.1.type",
        ),
        (
            {"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]},
            "input.0.content.0.type",
        ),
        (
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x/y.png"}],
            },
            "input.0.output.0.type",
        ),
    ],
)
def test_images_and_files_are_a_clear_400(item: dict[str, Any], param: str) -> None:
    request = _parse({**GOOD, "input": [item]})
    with pytest.raises(InvalidRequest) as info:
        to_chat(request)
    assert info.value.status == 400
    assert info.value.param == param
    assert "text only" in info.value.message


def test_no_messages_at_all_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        to_chat(_parse({**GOOD, "input": []}))
    assert info.value.param == "input"
