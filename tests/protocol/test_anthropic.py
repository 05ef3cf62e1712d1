"""Anthropic Messages requests: every block kind parses, bad fields are 400s naming them,
a Claude-Code-shaped request is accepted whole, and errors use Anthropic's envelope."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import ErrorResponse

from cortex import errors
from cortex.errors import CortexError, InvalidRequest
from cortex.protocol.anthropic import (
    CountTokensRequest,
    CustomTool,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    OtherBlock,
    RedactedThinkingBlock,
    ServerTool,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ThinkingOther,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    error_body,
    error_type_for_status,
    parse_count_tokens_request,
    parse_messages_request,
)

GOOD: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
SCHEMA = "https://json-schema.org/draft/2020-12/schema"
CACHE = {"type": "ephemeral"}


def _parse(body: object) -> MessagesRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_messages_request(raw)


def _with_blocks(*blocks: dict[str, Any], role: str = "user") -> MessagesRequest:
    return _parse({**GOOD, "messages": [{"role": role, "content": list(blocks)}]})


@pytest.mark.parametrize(
    ("block", "kind"),
    [
        ({"type": "text", "text": "hi", "cache_control": CACHE}, TextBlock),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}},
            ImageBlock,
        ),
        ({"type": "document", "source": {"type": "text", "data": "doc"}}, DocumentBlock),
        ({"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"path": "."}}, ToolUseBlock),
        ({"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}, ToolResultBlock),
        ({"type": "thinking", "thinking": "hm", "signature": "c2ln"}, ThinkingBlock),
        ({"type": "thinking", "thinking": "hm", "signature": ""}, ThinkingBlock),
        ({"type": "thinking", "thinking": "hm"}, ThinkingBlock),
        ({"type": "redacted_thinking", "data": "opaque"}, RedactedThinkingBlock),
        ({"type": "search_result", "source": "s", "title": "t", "content": []}, OtherBlock),
        ({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"}, OtherBlock),
    ],
)
def test_every_block_kind_parses(block: dict[str, Any], kind: type) -> None:
    content = _with_blocks(block).messages[0].content
    assert isinstance(content, list)
    assert isinstance(content[0], kind)
    assert content[0].type == block["type"]


def test_tool_result_content_as_blocks_and_error_flag() -> None:
    block = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "is_error": True,
        "content": [
            {"type": "text", "text": "line 1"},
            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}},
            {"type": "tool_reference", "tool_name": "ls"},
        ],
    }
    result = _with_blocks(block).messages[0].content[0]
    assert isinstance(result, ToolResultBlock)
    assert result.is_error is True
    assert isinstance(result.content, list)
    assert [type(part) for part in result.content] == [TextBlock, ImageBlock, OtherBlock]


def test_any_role_is_kept_as_sent() -> None:
    request = _parse(
        {
            **GOOD,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "developer", "content": "also this"},
            ],
        }
    )
    assert [m.role for m in request.messages] == ["user", "system", "developer"]


@pytest.mark.parametrize(
    ("thinking", "kind", "omit", "disabled"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, ThinkingEnabled, False, False),
        ({"type": "adaptive"}, ThinkingAdaptive, False, False),
        ({"type": "adaptive", "display": "omitted"}, ThinkingAdaptive, True, False),
        (
            {"type": "enabled", "budget_tokens": 1024, "display": "omitted"},
            ThinkingEnabled,
            True,
            False,
        ),
        ({"type": "disabled"}, ThinkingDisabled, False, True),
        ({"type": "between_tools"}, ThinkingOther, False, False),
    ],
)
def test_thinking_configs(thinking: dict[str, Any], kind: type, omit: bool, disabled: bool) -> None:
    request = _parse({**GOOD, "thinking": thinking})
    assert isinstance(request.thinking, kind)
    assert request.omit_thinking is omit
    assert request.thinking_disabled is disabled


@pytest.mark.parametrize(
    ("choice", "kind"),
    [
        ({"type": "auto"}, ToolChoiceAuto),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoiceAny),
        ({"type": "tool", "name": "ls"}, ToolChoiceTool),
        ({"type": "none"}, ToolChoiceNone),
    ],
)
def test_tool_choices(choice: dict[str, Any], kind: type) -> None:
    assert isinstance(_parse({**GOOD, "tool_choice": choice}).tool_choice, kind)


def test_hosted_tools_are_accepted_loosely() -> None:
    tools = [
        {"name": "ls", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "cat", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    request = _parse({**GOOD, "tools": tools})
    assert [type(t) for t in request.tools or []] == [
        CustomTool,
        CustomTool,
        ServerTool,
        ServerTool,
    ]


def _claude_code_tool(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name} tool.",
        "input_schema": {
            "$schema": SCHEMA,
            "type": "object",
            "properties": {"path": {"type": "string", "description": "Where."}},
            "required": ["path"],
            "additionalProperties": False,
        },
        **extra,
    }


TOOL_NAMES = [
    "Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit",
    "MultiEdit", "Write", "NotebookEdit", "WebFetch", "TodoWrite",
]  # fmt: skip


def claude_code_request() -> dict[str, Any]:
    """The shape of Claude Code's first request (trimmed texts, real structure)."""
    tools = [_claude_code_tool(name) for name in TOOL_NAMES[:-1]]
    tools.append(_claude_code_tool(TOOL_NAMES[-1], defer_loading=True))
    return {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0"},
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": CACHE,
            },
            {"type": "text", "text": "You are an interactive CLI tool.", "cache_control": CACHE},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                    {"type": "text", "text": "list the files", "cache_control": CACHE},
                ],
            },
            {"role": "system", "content": "gitStatus: clean"},
        ],
        "tools": tools,
        "metadata": {"user_id": json.dumps({"device_id": "abc", "session_id": "s-1"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }


def test_claude_code_request_parses() -> None:
    request = _parse(claude_code_request())
    assert request.max_tokens == 32000
    assert request.stream is True
    assert isinstance(request.system, list)
    assert len(request.system) == 3
    assert [m.role for m in request.messages] == ["user", "system"]
    assert len(request.tools or []) == 13
    tool = (request.tools or [])[0]
    assert isinstance(tool, CustomTool)
    assert tool.input_schema["$schema"] == SCHEMA
    assert request.omit_thinking
    assert request.metadata is not None
    assert json.loads(request.metadata["user_id"])["session_id"] == "s-1"
    # Fields we do not act on are kept, not refused.
    assert request.model_extra == {
        "context_management": claude_code_request()["context_management"],
    }
    assert request.output_config is not None
    assert request.output_config.effort == "medium"


def test_count_tokens_request_needs_no_max_tokens() -> None:
    body = claude_code_request()
    del body["max_tokens"], body["stream"]
    request = parse_count_tokens_request(json.dumps(body).encode())
    assert isinstance(request, CountTokensRequest)
    assert not isinstance(request, MessagesRequest)
    assert len(request.messages) == 2


def test_a_dict_body_is_validated_the_same() -> None:
    assert parse_messages_request(GOOD).max_tokens == 64
    with pytest.raises(InvalidRequest, match="max_tokens"):
        parse_messages_request({k: v for k, v in GOOD.items() if k != "max_tokens"})


def test_missing_max_tokens_names_it() -> None:
    body = {k: v for k, v in GOOD.items() if k != "max_tokens"}
    with pytest.raises(InvalidRequest) as info:
        _parse(body)
    assert info.value.status == 400
    assert info.value.param == "max_tokens"
    assert "max_tokens" in info.value.message


def _message(content: object) -> dict[str, Any]:
    return {**GOOD, "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({**GOOD, "max_tokens": 0}, "max_tokens"),
        ({**GOOD, "max_tokens": "64"}, "max_tokens"),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "model": ""}, "model"),
        ({**GOOD, "temperature": 1.5}, "temperature"),
        ({**GOOD, "stream": "yes"}, "stream"),
        ({**GOOD, "stop_sequences": "END"}, "stop_sequences"),
        ({**GOOD, "system": [{"type": "image"}]}, "system.0.type"),
        ({**GOOD, "messages": [{"content": "hi"}]}, "messages.0.role"),
        (_message(5), "messages.0.content"),
        (_message([{"text": "no type"}]), "messages.0.content.0.type"),
        (_message([{"type": "text"}]), "messages.0.content.0.text"),
        (_message([{"type": "tool_use", "id": "t", "name": "ls"}]), "messages.0.content.0.input"),
        (
            _message([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}]),
            "messages.0.content.0.content.0.text",
        ),
        (_message([{"type": "thinking", "signature": "s"}]), "messages.0.content.0.thinking"),
        ({**GOOD, "tools": [{"name": "ls"}]}, "tools.0.input_schema"),
        ({**GOOD, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({**GOOD, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({**GOOD, "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ],
)
def test_bad_requests_are_invalid_request_naming_the_field(body: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        _parse(body)
    assert info.value.status == 400
    assert info.value.param == param
    if param:
        assert info.value.message.startswith(f"{param}: ")


# --- errors -------------------------------------------------------------------------------


def _error_classes() -> list[type[CortexError]]:
    found, todo = [], [CortexError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted((c for c in found if c is not errors.ConfigError), key=lambda c: c.__name__)


EXPECTED_TYPES = {
    "CortexError": "api_error",
    "InvalidRequest": "invalid_request_error",
    "ContextLengthExceeded": "invalid_request_error",
    "RequestTooLarge": "request_too_large",
    "HeadTooLarge": "request_too_large",
    "UriTooLong": "request_too_large",
    "RequestTimeout": "invalid_request_error",
    "Unauthorized": "authentication_error",
    "Forbidden": "permission_error",
    "NotFound": "not_found_error",
    "ModelNotFound": "not_found_error",
    "SourceNotFound": "not_found_error",
    "Conflict": "invalid_request_error",
    "Overloaded": "rate_limit_error",
    "InsufficientMemory": "overloaded_error",
    "NoCapacity": "overloaded_error",
    "ModelLoadFailed": "api_error",
    "NeuronUnavailable": "overloaded_error",
    "BadUpstream": "api_error",
    "EventTooLarge": "api_error",
    "UpstreamTimeout": "timeout_error",
    "EngineFailure": "api_error",
}


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_error_envelope_for_each_error_class(cls: type[CortexError]) -> None:
    body = error_body(cls("it went wrong"), request_id="req_1")
    assert body == {
        "type": "error",
        "error": {"type": EXPECTED_TYPES[cls.__name__], "message": "it went wrong"},
        "request_id": "req_1",
    }
    if cls.anthropic_type != "request_too_large":  # not in the SDK's ErrorObject union
        assert ErrorResponse.model_validate(body).error.type == cls.anthropic_type


def test_error_envelope_without_request_id() -> None:
    assert error_body(InvalidRequest("bad"))["request_id"] is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_type_for_status(status: int, kind: str) -> None:
    assert error_type_for_status(status) == kind


def test_a_max_tokens_no_engine_can_hold_is_a_400_naming_it() -> None:
    for value in (2**31, 2**64):
        with pytest.raises(InvalidRequest, match="max_tokens"):
            parse_messages_request({**GOOD, "max_tokens": value})
    assert parse_messages_request({**GOOD, "max_tokens": 2**31 - 1}).max_tokens == 2**31 - 1
