"""Responses ``text.format`` and strict function tools → the chat request's structured outputs;
bodies as the official SDK sends them, and malformed formats refused with a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from cortex.errors import InvalidRequest
from cortex.neuron.responses_to_chat import to_chat
from cortex.neuron.wire.events import Done, Text
from cortex.neuron.wire.responses_projection import ResponseCollector, response_head
from cortex.protocol.openai import ChatCompletionRequest, ResponseFormat
from cortex.protocol.responses import ResponsesRequest, parse_responses_request

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def _parse(**fields: Any) -> ResponsesRequest:
    body = {"model": "qwen", "input": "Name a city.", **fields}
    return parse_responses_request(json.dumps(body).encode())


def _chat(**fields: Any) -> ChatCompletionRequest:
    chat = to_chat(_parse(**fields)).chat_request("qwen")
    # What the neuron's chat endpoint would make of the same body.
    dumped = chat.model_dump_json(by_alias=True, exclude_none=True).encode()
    assert ChatCompletionRequest.model_validate_json(dumped) == chat
    return chat


def _format(**fields: Any) -> ResponseFormat | None:
    return _chat(**fields).response_format


# --- text.format --------------------------------------------------------------------------


def test_json_schema_is_flattened_in_responses_and_nested_in_chat() -> None:
    text = {
        "format": {
            "type": "json_schema",
            "name": "city",
            "description": "A city.",
            "schema": SCHEMA,
            "strict": True,
        },
        "verbosity": "low",
    }
    fmt = _format(text=text)
    assert fmt is not None
    assert fmt.model_dump(by_alias=True) == {
        "type": "json_schema",
        "json_schema": {"name": "city", "description": "A city.", "schema": SCHEMA, "strict": True},
    }


def test_json_schema_needs_only_its_schema() -> None:
    fmt = _format(text={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert fmt is not None
    assert fmt.json_schema is not None
    assert fmt.json_schema.schema_ == SCHEMA
    assert fmt.json_schema.name is None
    assert fmt.json_schema.strict is None


def test_json_object() -> None:
    assert _format(text={"format": {"type": "json_object"}}) == ResponseFormat(type="json_object")


@pytest.mark.parametrize(
    "text", [None, {}, {"format": None}, {"format": {"type": "text"}}, {"verbosity": "high"}]
)
def test_text_or_no_format_is_free_text(text: dict[str, Any] | None) -> None:
    assert _format(text=text) is None


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "xml"}, "text.format.type"),
        ({"name": "city", "schema": SCHEMA}, "text.format.type"),
        ({"type": "json_schema", "name": "city"}, "text.format.schema"),
        ({"type": "json_schema", "schema": "{}"}, "text.format.schema"),
        ({"type": "json_schema", "schema": [SCHEMA]}, "text.format.schema"),
        # chat's nested shape is not the Responses shape
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": {}}}, "text.format.schema"),
        ({"type": "json_schema", "schema": SCHEMA, "strict": "yes"}, "text.format.strict"),
        ({"type": "json_schema", "schema": SCHEMA, "name": 7}, "text.format.name"),
        ("json", "text.format"),
    ],
)
def test_a_malformed_format_is_a_400_naming_the_field(fmt: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _parse(text={"format": fmt})
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    # to_chat refuses it the same way for a request built without parse_responses_request
    request = ResponsesRequest.model_validate(
        {"model": "qwen", "input": "hi", "text": {"format": fmt}}
    )
    with pytest.raises(InvalidRequest) as again:
        to_chat(request)
    assert again.value.param == param


def test_text_that_is_not_an_object_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _parse(text="json")
    assert caught.value.param == "text"


# --- strict tools -------------------------------------------------------------------------


def test_strict_function_tools_stay_strict() -> None:
    tools = [
        {"type": "function", "name": "lookup", "parameters": SCHEMA, "strict": True},
        {"type": "function", "name": "loose", "parameters": SCHEMA, "strict": False},
        {
            "type": "namespace",
            "name": "files",
            "tools": [{"type": "function", "name": "read", "parameters": SCHEMA, "strict": True}],
        },
    ]
    chat = _chat(tools=tools, text={"format": {"type": "json_object"}})
    assert chat.tools is not None
    assert [(t.function.name, t.function.strict) for t in chat.tools] == [
        ("lookup", True),
        ("loose", False),
        ("files__read", True),
    ]
    assert chat.response_format == ResponseFormat(type="json_object")


# --- what the official SDK sends, and reads back -------------------------------------------


class City(BaseModel):
    city: str


def test_the_sdks_responses_parse_round_trips() -> None:
    seen: list[ChatCompletionRequest] = []

    def answer(request: httpx.Request) -> httpx.Response:
        parsed = parse_responses_request(request.content)
        seen.append(to_chat(parsed).chat_request(parsed.model))
        collector = ResponseCollector(response_head(parsed, "resp_1", 1_700_000_000), {})
        for event in (Text('{"city": '), Text('"Oslo"}'), Done("stop", 5, 6)):
            collector.add(event)
        body = json.dumps(collector.response()).encode()
        return httpx.Response(200, headers={"content-type": "application/json"}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    client = openai.OpenAI(api_key="x", base_url="http://neuron/v1", http_client=http)  # type: ignore[arg-type]
    function = openai.pydantic_function_tool(City, name="lookup")["function"]
    tool: Any = {"type": "function", **function}
    response = client.responses.parse(
        model="qwen", input="Name a city.", text_format=City, tools=[tool]
    )
    assert response.output_parsed == City(city="Oslo")
    # The reply echoes the request's text config, as OpenAI's does.
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    (chat,) = seen
    fmt = chat.response_format
    assert fmt is not None
    assert fmt.type == "json_schema"
    assert fmt.json_schema is not None
    assert fmt.json_schema.name == "City"
    assert fmt.json_schema.strict is True
    assert fmt.json_schema.schema_ is not None
    assert fmt.json_schema.schema_["properties"]["city"]["type"] == "string"
    assert chat.tools is not None
    assert chat.tools[0].function.strict is True
