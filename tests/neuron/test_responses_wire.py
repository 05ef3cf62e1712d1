"""Events → Responses API objects and stream events, checked against the official SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cortex.neuron.responses_to_chat import ResponseStore, output_messages, to_chat
from cortex.neuron.wire.events import Done, Error, InferenceEvent, Reasoning, Text, ToolCall
from cortex.neuron.wire.responses_projection import (
    ResponseCollector,
    ResponseStreamProjector,
    new_id,
    response_head,
)
from cortex.protocol.openai import ChatMessage
from cortex.protocol.responses import ResponsesRequest, parse_responses_request

EVENT = TypeAdapter[Any](ResponseStreamEvent)

TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False},
    {
        "type": "namespace",
        "name": "mcp__files__",
        "description": "File tools.",
        "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
    },
    {"type": "web_search"},
]

SCENARIOS: dict[str, list[InferenceEvent]] = {
    "text": [Text("Hel"), Text("lo, "), Text("world."), Done("stop", 11, 3)],
    "reasoning_then_text": [
        Reasoning("The user"),
        Reasoning(" greets."),
        Text("Hi"),
        Text("!"),
        Done("stop", 11, 6, reasoning_tokens=4),
    ],
    "reasoning_then_two_calls": [
        Reasoning("Need weather and a file."),
        ToolCall(0, "call_a", "get_weather", '{"city": "Oslo"}'),
        ToolCall(1, "call_b", "mcp__files__read", '{"path": "a.txt"}'),
        Done("tool_calls", 20, 30, reasoning_tokens=8),
    ],
    "length": [Reasoning("Think"), Text("Cut of"), Done("length", 5, 4, reasoning_tokens=1)],
    "error": [Text("Par"), Error("CUDA out of memory")],
}


def _request(**fields: Any) -> ResponsesRequest:
    body = {"model": "qwen", "input": "hi", "tools": TOOLS, **fields}
    return parse_responses_request(json.dumps(body).encode())


def _head(request: ResponsesRequest) -> dict[str, Any]:
    return response_head(request, new_id("resp"), 1_700_000_000)


def _stream(events: list[InferenceEvent], request: ResponsesRequest | None = None) -> bytes:
    request = request or _request()
    projector = ResponseStreamProjector(_head(request), to_chat(request).tool_names)
    return projector.start() + b"".join(projector.project(e) for e in events)


def _collect(events: list[InferenceEvent]) -> dict[str, Any]:
    request = _request()
    collector = ResponseCollector(_head(request), to_chat(request).tool_names)
    for event in events:
        collector.add(event)
    return collector.response()


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        out.append(payload)
    return out


def _client(body: bytes, content_type: str) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    # The SDK is built on httpx2 and also takes a legacy httpx client.
    return openai.OpenAI(api_key="x", base_url="http://neuron/v1", http_client=http)  # type: ignore[arg-type]


def _strip_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k not in ("id", "completed_at")}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_stream_event_is_an_sdk_event_numbered_from_zero(name: str) -> None:
    events = _events(_stream(SCENARIOS[name]))
    for payload in events:
        EVENT.validate_python(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_stream_and_collector_agree_and_validate(name: str) -> None:
    events = _events(_stream(SCENARIOS[name]))
    streamed = events[-1]["response"]
    collected = _collect(SCENARIOS[name])
    Response.model_validate(streamed)
    Response.model_validate(collected)
    assert _strip_ids(streamed) == _strip_ids(collected)
    done = {
        e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"
    }
    assert [done[i] for i in sorted(done)] == streamed["output"]
    # The deltas of each item join to that item's final text or arguments.
    for index, item in enumerate(streamed["output"]):
        deltas = "".join(
            e["delta"] for e in events if e.get("output_index") == index and "delta" in e
        )
        if item["type"] == "function_call":
            assert deltas == item["arguments"]
        else:
            assert deltas == item["content"][0]["text"]


def test_reasoning_text_then_a_tool_call_in_exact_order() -> None:
    events: list[InferenceEvent] = [
        Reasoning("Hmm."),
        Text("Checking."),
        ToolCall(0, "call_1", "get_weather", "{}"),
    ]
    types = [e["type"] for e in _events(_stream([*events, Done("tool_calls", 3, 9)]))]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_text_output_usage_and_status() -> None:
    response = Response.model_validate(_collect(SCENARIOS["reasoning_then_text"]))
    assert response.status == "completed"
    assert response.output_text == "Hi!"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.id.startswith("resp_")
    assert str(response.output[0].id).startswith("rs_")
    assert str(response.output[1].id).startswith("msg_")
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 6, 17)
    assert usage.output_tokens_details.reasoning_tokens == 4
    assert usage.input_tokens_details.cached_tokens == 0


def test_tool_calls_come_back_with_their_namespace() -> None:
    response = Response.model_validate(_collect(SCENARIOS["reasoning_then_two_calls"]))
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.namespace, c.call_id) for c in calls] == [
        ("get_weather", None, "call_a"),
        ("read", "mcp__files__", "call_b"),
    ]
    assert all(c.id is not None and c.id.startswith("fc_") for c in calls)
    assert calls[1].arguments == '{"path": "a.txt"}'
    assert response.output_text == ""


def test_length_cut_off_is_incomplete() -> None:
    events = _events(_stream(SCENARIOS["length"]))
    assert events[-1]["type"] == "response.incomplete"
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert [item.model_dump()["status"] for item in response.output] == ["completed", "incomplete"]
    assert response.output_text == "Cut of"


def test_error_fails_the_response() -> None:
    events = _events(_stream(SCENARIOS["error"]))
    assert events[-1]["type"] == "response.failed"
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "failed"
    assert response.error is not None
    assert response.error.code == "server_error"
    assert response.error.message == "CUDA out of memory"
    assert response.output_text == "Par"


@pytest.mark.parametrize(
    ("finish", "event", "status"),
    [("error", "response.failed", "failed"), ("cancelled", "response.incomplete", "cancelled")],
)
def test_done_without_a_result(finish: Any, event: str, status: str) -> None:
    events = _events(_stream([Text("x"), Done(finish, 3, 1)]))
    assert events[-1]["type"] == event
    EVENT.validate_python(events[-1])
    response = Response.model_validate(events[-1]["response"])
    assert response.status == status
    assert response.usage is not None
    assert response.usage.output_tokens == 1


def test_events_after_the_end_are_ignored() -> None:
    request = _request()
    projector = ResponseStreamProjector(_head(request))
    projector.start()
    projector.project(Done("stop", 1, 0))
    assert projector.project(Text("late")) == b""
    assert projector.response is not None
    assert projector.response["output"] == []


def test_response_echoes_the_request() -> None:
    request = _request(
        instructions="Be brief.",
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=64,
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        reasoning={"effort": "low", "summary": "auto"},
        store=False,
        metadata={"k": "v"},
        previous_response_id="resp_prev",
        truncation="auto",
    )
    response = Response.model_validate(_collect([Done("stop", 1, 0)]))
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "text"
    echoed = Response.model_validate({**response_head(request, "resp_1", 5), "status": "completed"})
    assert echoed.instructions == "Be brief."
    assert (echoed.temperature, echoed.top_p, echoed.max_output_tokens) == (0.5, 0.9, 64)
    assert echoed.parallel_tool_calls is False
    assert echoed.previous_response_id == "resp_prev"
    assert echoed.metadata == {"k": "v"}
    assert echoed.truncation == "auto"
    assert echoed.reasoning is not None
    assert echoed.reasoning.summary == "auto"
    assert [tool.type for tool in echoed.tools] == ["function", "namespace", "web_search"]
    assert echoed.model_extra is not None
    assert echoed.model_extra["store"] is False


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_sdk_client_reads_the_stream(name: str) -> None:
    body = _stream(SCENARIOS[name])
    client = _client(body, "text/event-stream")
    streamed = list(client.responses.create(model="qwen", input="hi", stream=True))
    assert [e.sequence_number for e in streamed] == list(range(len(streamed)))
    # The stream helper runs the SDK's own accumulator, which checks the event order.
    with client.responses.stream(model="qwen", input="hi", tools=TOOLS) as stream:  # type: ignore[arg-type]
        types = [event.type for event in stream]
        expected = Response.model_validate(_events(body)[-1]["response"])
        assert types[-1] == f"response.{'failed' if name == 'error' else expected.status}"
        if expected.status != "completed":
            return  # the helper gives a final response only for ``response.completed``
        final = stream.get_final_response()
    assert final.output_text == expected.output_text
    assert len(final.output) == len(expected.output)


def test_the_sdk_client_reads_the_whole_response() -> None:
    body = json.dumps(_collect(SCENARIOS["reasoning_then_text"])).encode()
    response = _client(body, "application/json").responses.create(model="qwen", input="hi")
    assert response.output_text == "Hi!"


def test_output_becomes_one_assistant_message_for_the_store() -> None:
    output = _collect(SCENARIOS["reasoning_then_two_calls"])["output"]
    [message] = output_messages(output)
    assert message.role == "assistant"
    assert message.reasoning_content == "Need weather and a file."
    assert message.content is None
    assert message.tool_calls is not None
    assert [c.function.name for c in message.tool_calls] == ["get_weather", "mcp__files__read"]
    assert [c.id for c in message.tool_calls] == ["call_a", "call_b"]
    [text] = output_messages(_collect(SCENARIOS["text"])["output"])
    assert (text.content, text.tool_calls, text.reasoning_content) == ("Hello, world.", None, None)
    assert output_messages([]) == []


def test_store_continues_a_conversation_without_old_instructions() -> None:
    store = ResponseStore()
    first = _request(instructions="Old rules.")
    conversation = to_chat(first)
    response = _collect(SCENARIOS["text"])
    store.put(response["id"], conversation.continued(response["output"]))
    follow = _request(input="and then?", previous_response_id=response["id"], instructions="New.")
    turn = to_chat(follow, store.history_for(follow))
    assert [(m.role, m.content) for m in turn.messages] == [
        ("system", "New."),
        ("user", "hi"),
        ("assistant", "Hello, world."),
        ("user", "and then?"),
    ]


def test_store_is_a_bounded_lru() -> None:
    store = ResponseStore(max_responses=2)
    hello = [ChatMessage(role="user", content="hello")]
    store.put("a", hello)
    store.put("b", hello)
    assert store.get("a") == hello  # "a" is now the most recently used
    store.put("c", hello)
    assert len(store) == 2
    assert store.get("b") is None
    assert store.get("a") == hello
    assert store.get("c") == hello
    with pytest.raises(ValueError, match="max_responses"):
        ResponseStore(max_responses=0)


def test_unknown_previous_response_is_a_404_naming_the_field() -> None:
    from cortex.errors import NotFound

    with pytest.raises(NotFound) as info:
        ResponseStore().history_for(_request(previous_response_id="resp_gone"))
    assert info.value.status == 404
    assert info.value.param == "previous_response_id"
    assert ResponseStore().history_for(_request()) is None
