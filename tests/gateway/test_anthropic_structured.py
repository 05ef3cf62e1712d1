"""Anthropic structured outputs → the neuron's chat body: ``output_config.format``, the beta's
``output_format``, strict custom tools and ``output_config.effort``; bodies as the official SDK
sends them, and malformed ones refused with a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from pydantic import BaseModel

from cortex.errors import InvalidRequest
from cortex.gateway.dialects.anthropic_reply import from_openai
from cortex.gateway.dialects.anthropic_request import to_openai, to_tokenize
from cortex.protocol.anthropic import (
    error_body,
    parse_count_tokens_request,
    parse_messages_request,
)
from cortex.protocol.lifecycle import TokenizeRequest
from cortex.protocol.openai import ChatCompletion, ChatCompletionRequest, parse_request
from tests.protocol.test_anthropic import claude_code_request

BASE: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Name a city."}],
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "schema": SCHEMA}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
}


def _body(**extra: Any) -> dict[str, Any]:
    body = to_openai(parse_messages_request({**BASE, **extra}), "qwen3-8b")
    request = parse_request(ChatCompletionRequest, json.dumps(body).encode())  # a neuron takes it
    assert (request.response_format is not None) == ("response_format" in body)
    return body


def _refused(**extra: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        to_openai(parse_messages_request({**BASE, **extra}), "qwen3-8b")
    assert caught.value.status == 400
    return caught.value


# --- output formats -----------------------------------------------------------------------


def test_output_config_format_is_a_strict_json_schema_response_format() -> None:
    body = _body(output_config={"format": FORMAT})
    assert body["response_format"] == RESPONSE_FORMAT
    assert "reasoning_effort" not in body


def test_the_beta_output_format_is_the_same() -> None:
    assert _body(output_format=FORMAT)["response_format"] == RESPONSE_FORMAT


def test_both_with_one_schema_are_fine_two_schemas_are_a_400() -> None:
    body = _body(output_config={"format": FORMAT}, output_format=FORMAT)
    assert body["response_format"] == RESPONSE_FORMAT
    other = {"type": "json_schema", "schema": {"type": "object"}}
    err = _refused(output_config={"format": FORMAT}, output_format=other)
    assert err.param == "output_format"


def test_no_format_means_no_response_format() -> None:
    assert "response_format" not in _body()
    assert "response_format" not in _body(output_config={"effort": "low"})
    assert "response_format" not in _body(output_config={"format": None})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"output_config": {"format": {"schema": SCHEMA}}}, "output_config.format.type"),
        (
            {"output_config": {"format": {"type": "json_object", "schema": SCHEMA}}},
            "output_config.format.type",
        ),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": "{}"}}},
            "output_config.format.schema",
        ),
        ({"output_config": {"format": "json"}}, "output_config.format"),
        ({"output_config": {"effort": 2}}, "output_config.effort"),
        ({"output_format": {"type": "json_schema", "schema": [1]}}, "output_format.schema"),
        ({"tools": [{"name": "t", "input_schema": {}, "strict": "yes"}]}, "tools.0.strict"),
    ],
)
def test_malformed_fields_are_a_400_naming_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request({**BASE, **extra})
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    envelope = error_body(caught.value, "req_1")
    assert caught.value.status == 400
    assert envelope["error"]["type"] == "invalid_request_error"


# --- strict tools -------------------------------------------------------------------------


def test_a_strict_tool_is_a_strict_function() -> None:
    tools = [
        {"name": "lookup", "input_schema": SCHEMA, "strict": True},
        {"type": "custom", "name": "loose", "input_schema": {"type": "object"}, "strict": False},
        {"name": "plain", "input_schema": {"type": "object"}},
    ]
    functions = [tool["function"] for tool in _body(tools=tools)["tools"]]
    assert functions[0] == {"name": "lookup", "parameters": SCHEMA, "strict": True}
    assert functions[1]["strict"] is False
    assert "strict" not in functions[2]


# --- effort -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "expected"),
    [("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "high"), ("max", "high")],
)
def test_effort_with_thinking_enabled_is_the_reasoning_effort(effort: str, expected: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": 50}
    body = _body(output_config={"effort": effort}, thinking=thinking)
    assert body["reasoning_effort"] == expected
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "thinking": True}


def test_effort_with_thinking_disabled_keeps_thinking_off() -> None:
    body = _body(output_config={"effort": "high"}, thinking={"type": "disabled"})
    assert body["reasoning_effort"] == "high"
    assert body["chat_template_kwargs"] == {"enable_thinking": False, "thinking": False}


@pytest.mark.parametrize("thinking", [None, {"type": "adaptive"}])
def test_effort_without_explicit_thinking_leaves_the_template_default(
    thinking: dict[str, Any] | None,
) -> None:
    extra = {"thinking": thinking} if thinking else {}
    body = _body(output_config={"effort": "high"}, **extra)
    assert "reasoning_effort" not in body
    assert "chat_template_kwargs" not in body


def test_an_unknown_effort_is_accepted_and_ignored() -> None:
    body = _body(output_config={"effort": "extreme"}, thinking={"type": "disabled"})
    assert "reasoning_effort" not in body


def test_claude_codes_request_is_unchanged() -> None:
    body = to_openai(parse_messages_request(claude_code_request()), "qwen3-coder-30b")
    for key in ("response_format", "reasoning_effort", "output_config", "chat_template_kwargs"):
        assert key not in body


# --- count_tokens -------------------------------------------------------------------------


def test_count_tokens_accepts_structured_output_fields() -> None:
    body = {
        **BASE,
        "output_config": {"format": FORMAT, "effort": "max"},
        "output_format": FORMAT,
        "tools": [{"name": "lookup", "input_schema": SCHEMA, "strict": True}],
    }
    del body["max_tokens"]
    request = parse_count_tokens_request(json.dumps(body).encode())
    tokenize = to_tokenize(request, "qwen3-8b", None)
    TokenizeRequest.model_validate_json(json.dumps(tokenize))  # what a neuron takes
    assert tokenize["tools"][0]["function"]["strict"] is True
    assert "response_format" not in tokenize
    with pytest.raises(InvalidRequest) as caught:
        parse_count_tokens_request({**body, "output_config": {"format": {"type": "x"}}})
    assert caught.value.param == "output_config.format.type"


# --- what the official SDK sends ----------------------------------------------------------


class City(BaseModel):
    city: str


def _sdk_client(sent: dict[str, Any]) -> anthropic.Anthropic:
    """A client whose every request is translated (into ``sent``) and answered with the
    translation of a chat completion holding ``{"city": "Oslo"}``."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.update(to_openai(parse_messages_request(json.loads(request.content)), "qwen3-8b"))
        completion = ChatCompletion.model_validate(
            {
                "id": "chatcmpl-1",
                "created": 1,
                "model": "qwen3-8b",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": '{"city": "Oslo"}'},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            }
        )
        reply = json.dumps(from_openai(completion, "claude-x")).encode()
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=reply)

    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://cortex.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )


TOOL: Any = {"name": "lookup", "input_schema": SCHEMA, "strict": True}


@pytest.mark.parametrize("beta", [False, True])
def test_the_sdks_messages_parse_round_trips(beta: bool) -> None:
    sent: dict[str, Any] = {}
    client = _sdk_client(sent)
    if beta:
        message: Any = client.beta.messages.parse(
            **BASE, output_format=City, tools=[TOOL], betas=["structured-outputs-2025-11-13"]
        )
    else:
        message = client.messages.parse(
            **BASE, output_format=City, output_config={"effort": "low"}, tools=[TOOL]
        )
    spec = sent["response_format"]["json_schema"]
    assert sent["response_format"]["type"] == "json_schema"
    assert spec["name"] == "output"
    assert spec["strict"] is True
    assert spec["schema"]["properties"]["city"]["type"] == "string"
    assert sent["tools"][0]["function"]["strict"] is True
    assert "reasoning_effort" not in sent  # no thinking given: the template's default
    assert message.parsed_output == City(city="Oslo")


def test_the_older_beta_top_level_output_format_round_trips() -> None:
    sent: dict[str, Any] = {}
    message = _sdk_client(sent).beta.messages.create(
        **BASE, extra_body={"output_format": FORMAT}, betas=["structured-outputs-2025-11-13"]
    )
    assert sent["response_format"] == RESPONSE_FORMAT
    block: Any = message.content[0]
    assert json.loads(block.text) == {"city": "Oslo"}
