"""Reasoning and tool calls through a real neuron and the trained fixtures, with the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import NotFoundError, OpenAI

from cortex.testing import FIXTURES, WEATHER_TOOL
from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

PARIS = {"city": "Paris"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[Neuron]:
    log = tmp_path_factory.mktemp("tools-neuron") / "neuron.log"
    allowed = ["--allowed-path", str(trained_model)]  # a folder outside any model dir
    neuron = Neuron(["--preload", f"trained={trained_model}", "--name", "tools", *allowed], log)
    try:
        neuron.wait_ready()
        neuron.post("/models/load", json={"model": "trained", "source": str(trained_model)})
        yield neuron
    finally:
        neuron.stop()


def _client(neuron: Neuron) -> OpenAI:
    return OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)


def _chat(neuron: Neuron, name: str, **extra: Any) -> Any:
    fixture = FIXTURES[name]
    body = dict(extra.pop("extra_body", {}))
    if fixture.chat_template_kwargs:
        body["chat_template_kwargs"] = dict(fixture.chat_template_kwargs)
    return _client(neuron).chat.completions.create(
        model="trained",
        messages=fixture.message_list(),  # type: ignore[arg-type]
        tools=fixture.tool_list(),  # type: ignore[arg-type]
        extra_body=body or None,
        **extra,
    )


def _assemble(chunks: list[Any]) -> tuple[str, list[dict[str, Any]], list[str]]:
    """(content, tool calls by index, finish reasons) from streamed chunks, as an agent would."""
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    finishes = []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    return content, [calls[i] for i in sorted(calls)], finishes


def test_a_tool_call_streamed_and_not(trained: Neuron) -> None:
    reply = _chat(trained, "tool_call")
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == PARIS

    content, calls, finishes = _assemble(list(_chat(trained, "tool_call", stream=True)))
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", PARIS)]
    assert calls[0]["id"].startswith("call_")
    assert finishes == ["tool_calls"]


def test_first_tool_call_delta_carries_id_type_name_and_empty_arguments(trained: Neuron) -> None:
    chunks = list(_chat(trained, "tool_call", stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0, "function", "get_weather", ""
    )  # fmt: skip
    assert first.id
    assert all(d.id is None and d.function.name is None for d in deltas[1:])


def test_two_parallel_calls_get_indexes_0_and_1(trained: Neuron) -> None:
    _, calls, finishes = _assemble(list(_chat(trained, "two_tool_calls", stream=True)))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", PARIS), ("get_weather", {"city": "London"})
    ]  # fmt: skip
    assert calls[0]["id"] != calls[1]["id"]
    assert finishes == ["tool_calls"]
    reply = _chat(trained, "two_tool_calls")
    assert [c.function.arguments for c in reply.choices[0].message.tool_calls] == [
        json.dumps(PARIS), json.dumps({"city": "London"})
    ]  # fmt: skip


def test_parallel_tool_calls_false_stops_after_the_first(trained: Neuron) -> None:
    reply = _chat(trained, "two_tool_calls", parallel_tool_calls=False)
    assert [json.loads(c.function.arguments) for c in reply.choices[0].message.tool_calls] == [
        PARIS
    ]
    assert reply.choices[0].finish_reason == "tool_calls"


def test_xml_form_parses_to_the_same_structure(trained: Neuron) -> None:
    reply = _chat(trained, "xml_tool_call")
    calls = reply.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", PARIS)
    ]


def test_malformed_body_comes_back_as_content(trained: Neuron) -> None:
    reply = _chat(trained, "malformed_tool_call")
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == FIXTURES["malformed_tool_call"].reply
    assert reply.choices[0].finish_reason == "stop"


def test_reasoning_is_separated_in_both_fields(trained: Neuron) -> None:
    reply = _chat(trained, "reasoning")
    message = reply.choices[0].message
    assert message.content == "The answer is 4."
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == "The user wants 2 + 2. That is 4."
    assert message.model_extra["reasoning"] == "The user wants 2 + 2. That is 4."
    chunks = list(_chat(trained, "reasoning", stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == ("The user wants 2 + 2. That is 4.", "The answer is 4.")
    picked = _chat(trained, "reasoning", extra_body={"reasoning_field": "reasoning"})
    extra = picked.choices[0].message.model_extra or {}
    assert extra.get("reasoning") == "The user wants 2 + 2. That is 4."
    assert "reasoning_content" not in extra


def test_a_thinking_token_budget_cuts_reasoning_short(trained: Neuron) -> None:
    full = "The user wants 2 + 2. That is 4."
    reply = _chat(trained, "reasoning", max_tokens=24, extra_body={"thinking_token_budget": 3})
    reasoning = (reply.choices[0].message.model_extra or {})["reasoning_content"]
    assert reasoning
    assert full.startswith(reasoning)
    assert len(reasoning) < len(full)
    details = reply.usage.completion_tokens_details
    assert details is not None
    assert details.reasoning_tokens == 3 + 2  # the budget and both markers
    chunks = list(
        _chat(
            trained,
            "reasoning",
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"thinking_token_budget": 3},
        )
    )
    streamed = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert streamed == reasoning
    final = chunks[-1].usage
    assert final.completion_tokens_details.reasoning_tokens == 3 + 2
    unbudgeted = _chat(trained, "reasoning", extra_body={"thinking_token_budget": 100})
    assert unbudgeted.choices[0].message.model_extra["reasoning_content"] == full


def test_a_template_that_closed_thinking_starts_in_text(trained: Neuron) -> None:
    reply = _chat(trained, "no_thinking")
    assert reply.choices[0].message.content == "The answer is 6."
    assert "reasoning_content" not in (reply.choices[0].message.model_extra or {})


def test_tool_result_round_trip_renders_through_the_template(trained: Neuron) -> None:
    reply = _chat(trained, "tool_result")
    assert reply.choices[0].message.content == FIXTURES["tool_result"].reply


def test_tool_choice_none_named_and_required(trained: Neuron) -> None:
    named = _chat(
        trained, "tool_call", tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    calls = named.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", PARIS)
    ]
    required = _chat(trained, "tool_call", tool_choice="required")
    assert required.choices[0].message.tool_calls[0].function.name == "get_weather"
    none = _chat(trained, "plain", tool_choice="none")
    assert none.choices[0].message.tool_calls is None


def test_responses_api_text_reasoning_and_function_calls(trained: Neuron) -> None:
    client = _client(trained)
    plain = client.responses.create(model="trained", input="Say hello.")
    assert plain.output_text == FIXTURES["plain"].reply
    assert plain.status == "completed"
    assert plain.usage is not None
    assert plain.usage.output_tokens > 0

    thought = client.responses.create(model="trained", input=FIXTURES["reasoning"].message_list())  # type: ignore[arg-type]
    kinds = [item.type for item in thought.output]
    assert kinds == ["reasoning", "message"]
    assert thought.output_text == "The answer is 4."
    assert thought.usage is not None
    assert thought.usage.output_tokens_details.reasoning_tokens > 0

    tool = WEATHER_TOOL["function"]
    tools = [{"type": "function", "name": tool["name"], "description": tool["description"],
              "parameters": tool["parameters"]}]  # fmt: skip
    called = client.responses.create(
        model="trained",
        input=FIXTURES["tool_call"].message_list(),
        tools=tools,  # type: ignore[arg-type]
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", PARIS)]

    streamed = list(
        client.responses.create(
            model="trained",
            input=FIXTURES["tool_call"].message_list(),
            tools=tools,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert streamed[0].type == "response.created"
    assert streamed[-1].type == "response.completed"
    assert [e.sequence_number for e in streamed] == list(range(len(streamed)))
    arguments = "".join(
        e.delta for e in streamed if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == PARIS

    # The tool result goes back as items, as agents replay them.
    call = calls[0]
    follow = client.responses.create(
        model="trained",
        tools=tools,  # type: ignore[arg-type]
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": call.name,
                "arguments": '{"city": "Paris"}',
            },
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": '{"temperature": 21, "sky": "clear"}',
            },
        ],
    )
    assert follow.output_text == FIXTURES["tool_result"].reply


def test_previous_response_id(trained: Neuron) -> None:
    client = _client(trained)
    first = client.responses.create(model="trained", input="Say hello.")
    second = client.responses.create(
        model="trained", input="Say hello.", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn came along
    with pytest.raises(NotFoundError):
        client.responses.create(model="trained", input="hi", previous_response_id="resp_unknown")


def test_capabilities_are_probed_at_load(trained: Neuron) -> None:
    record = next(m for m in trained.get("/node").json()["models"] if m["id"] == "trained")
    assert record["capabilities"] == {
        "tools": True,
        "reasoning": True,
        "tool_format": "hermes",
        "reasoning_format": "think",
    }


def test_a_codex_shaped_request_streams_to_completion(trained: Neuron) -> None:
    """What OpenAI's Codex CLI sends: ~40 KB, developer prompt, item ids, mixed tools."""
    instructions = "You are Codex, a coding agent. Follow the repository's conventions. " * 450
    function = {
        "type": "function", "name": "shell", "description": "Run a shell command.", "strict": False,
        "parameters": {"type": "object", "properties": {"command": {"type": "array",
                       "items": {"type": "string"}}}, "required": ["command"]},
    }  # fmt: skip
    namespace = {
        "type": "namespace", "name": "mcp__files__", "description": "File tools",
        "tools": [{"type": "function", "name": "read", "description": "Read a file.",
                   "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}],
    }  # fmt: skip
    body = {
        "model": "trained",
        "input": [
            {"type": "message", "id": "msg_dev", "role": "developer",
             "content": [{"type": "input_text", "text": instructions}]},
            {"type": "message", "id": "msg_1", "role": "user",
             "content": [{"type": "input_text", "text": "List the files."}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "shell",
             "arguments": '{"command": ["ls"]}'},
            {"type": "function_call_output", "id": "fco_1", "call_id": "call_a",
             "output": "README.md\nsrc\n"},
            {"type": "message", "id": "msg_2", "role": "user",
             "content": [{"type": "input_text", "text": "Say hello."}]},
        ],
        "tools": [function, namespace, {"type": "web_search"}],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "store": False,
        "stream": True,
        "max_output_tokens": 24,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
        "prompt_cache_key": "session-1",
        "client_metadata": {"originator": "codex_cli_rs"},
    }  # fmt: skip
    assert len(json.dumps(body)) > 30_000
    events = []
    with trained.stream_post("/v1/responses", body) as response:
        assert response.status_code == 200
        assert response.headers["x-cortex-ignored-tools"] == "web_search"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["usage"]["input_tokens"] > 5000
