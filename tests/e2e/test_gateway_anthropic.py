"""The Anthropic Messages API at a real gateway, through the official ``anthropic`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex.testing import FIXTURES, WEATHER_TOOL
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

EPHEMERAL = {"type": "ephemeral"}
REMINDER = "<system-reminder>Use the tools.</system-reminder>"

TOOLS = [
    {
        "name": WEATHER_TOOL["function"]["name"],
        "description": WEATHER_TOOL["function"]["description"],
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }
]


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, fleet_dir: Path
) -> Iterator[tuple[Neuron, Gateway]]:
    logs = tmp_path_factory.mktemp("anthropic")
    neuron = Neuron(["--model-dir", str(fleet_dir), "--name", "a"], logs / "neuron.log")
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        models = (
            '[[models]]\nid = "trained"\npinned = true\n'
            '[[models]]\nid = "m1"\n'
            '[aliases]\n"claude-sonnet-4-6" = "trained"\n"claude-*" = "trained"\n'
        )
        gateway = Gateway({"a": neuron}, models, logs / "gateway")
        gateway.wait_ready()
        yield neuron, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def _user(name: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": FIXTURES[name].message_list()[-1]["content"]}]


def test_plain_reply_stream_and_not(fleet: tuple[Neuron, Gateway]) -> None:
    client = _client(fleet[1])
    message = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=_user("plain"),  # type: ignore[arg-type]
    )
    assert message.model == "claude-sonnet-4-6"
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == FIXTURES["plain"].reply  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=_user("plain"),  # type: ignore[arg-type]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == FIXTURES["plain"].reply
    assert final.model == "claude-haiku-4-5"
    assert final.usage.input_tokens == message.usage.input_tokens


def test_a_thinking_budget_cuts_the_thinking_block_short(fleet: tuple[Neuron, Gateway]) -> None:
    full = "The user wants 2 + 2. That is 4."

    def thought(budget: int) -> str:
        reply = _client(fleet[1]).messages.create(
            model="claude-sonnet-4-6",
            max_tokens=24,
            messages=_user("reasoning"),  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": budget},
        )
        block = reply.content[0]
        assert block.type == "thinking"
        return block.thinking

    short = thought(3)
    assert short
    assert full.startswith(short)
    assert len(short) < len(full)
    assert thought(1000) == full


def test_thinking_then_text_and_tool_use_in_order(fleet: tuple[Neuron, Gateway]) -> None:
    client = _client(fleet[1])
    thought = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=_user("reasoning"),  # type: ignore[arg-type]
    )
    assert [b.type for b in thought.content] == ["thinking", "text"]
    assert thought.content[0].thinking == "The user wants 2 + 2. That is 4."  # type: ignore[union-attr]
    assert thought.content[0].signature  # type: ignore[union-attr]
    assert thought.content[1].text == "The answer is 4."  # type: ignore[union-attr]

    for stream in (False, True):
        if stream:
            with client.messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=64,
                tools=TOOLS,  # type: ignore[arg-type]
                messages=_user("tool_call"),  # type: ignore[arg-type]
            ) as events:
                called = events.get_final_message()
        else:
            called = client.messages.create(
                model="claude-sonnet-4-6", max_tokens=64, tools=TOOLS,  # type: ignore[arg-type]
                messages=_user("tool_call"),  # type: ignore[arg-type]
            )  # fmt: skip
        assert called.stop_reason == "tool_use"
        uses = [b for b in called.content if b.type == "tool_use"]
        assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"})]


def test_stream_events_come_in_anthropics_order(fleet: tuple[Neuron, Gateway]) -> None:
    client = _client(fleet[1])
    events = list(
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=_user("reasoning"),
            stream=True,  # type: ignore[arg-type]
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas.index("signature_delta") < deltas.index("text_delta")
    assert events[0].message.usage.input_tokens > 0  # type: ignore[union-attr]


def test_tool_result_round_trip(fleet: tuple[Neuron, Gateway]) -> None:
    client = _client(fleet[1])
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": '{"temperature": 21, "sky": "clear"}', "is_error": False}
        ]},
    ]  # fmt: skip
    reply = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        tools=TOOLS,
        messages=history,  # type: ignore[arg-type]
    )
    assert reply.content[0].text == FIXTURES["tool_result"].reply  # type: ignore[union-attr]


def test_count_tokens_equals_the_neurons_count(fleet: tuple[Neuron, Gateway]) -> None:
    neuron, gateway = fleet
    messages = _user("tool_call")
    counted = _client(gateway).messages.count_tokens(
        model="claude-sonnet-4-6",
        messages=messages,
        tools=TOOLS,
        system="Be brief.",  # type: ignore[arg-type]
    )
    tools = [{"type": "function", "function": WEATHER_TOOL["function"]}]
    direct = neuron.post(
        "/tokenize",
        json={"model": "trained", "tools": tools,
              "messages": [{"role": "system", "content": "Be brief."}, *messages]},
    ).json()["count"]  # fmt: skip
    assert counted.input_tokens == direct
    # m1 is not loaded: counting reads only its tokenizer.
    cold = _client(gateway).messages.count_tokens(model="m1", messages=messages)  # type: ignore[arg-type]
    assert cold.input_tokens > 0
    assert "m1" not in {m["id"] for m in neuron.get("/node").json()["models"]}


def test_errors_raised_by_the_sdk_from_our_envelopes(fleet: tuple[Neuron, Gateway]) -> None:
    client = _client(fleet[1])
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="gpt-unknown", max_tokens=8, messages=_user("plain"))  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    raw = httpx.post(
        f"{fleet[1].url}/v1/messages",
        json={"model": "claude-sonnet-4-6", "messages": _user("plain")},
        headers={"anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert raw.status_code == 400
    assert raw.json()["type"] == "error"
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in raw.json()["error"]["message"]
    # The SDK's create() refuses to send without max_tokens; its lower level sends anything.
    with pytest.raises(anthropic.BadRequestError) as no_max:
        client.post(
            "/v1/messages",
            cast_to=anthropic.types.Message,
            body={"model": "claude-sonnet-4-6", "messages": _user("plain")},
        )
    assert "max_tokens" in no_max.value.message
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=8,
            messages=[{"role": "user", "content": [image]}],  # type: ignore[list-item]
        )


def test_a_claude_code_shaped_request(fleet: tuple[Neuron, Gateway]) -> None:
    """What Claude Code 2.1 sends: ?beta=true, beta headers, system blocks, a system message
    last in `messages`, many tools with 2020-12 schemas, thinking history without
    signatures, adaptive thinking with display omitted."""
    gateway = fleet[1]
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "properties": {"command": {"type": "string"}}, "required": ["command"],
              "additionalProperties": False}  # fmt: skip
    tools = [{"name": f"Tool{i}", "description": "A tool. " * 300, "input_schema": schema}
             for i in range(12)]  # fmt: skip
    tools[3]["defer_loading"] = True
    body = {
        "model": "claude-sonnet-4-6-20260101",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "Instructions. " * 400, "cache_control": EPHEMERAL},
            {"type": "text", "text": "Environment.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hello.",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "Greet."},
                                              {"type": "text", "text": "Hello."}]},
            {"role": "user", "content": "Say hello."},
            {"role": "system", "content": [{"type": "text", "text": REMINDER}]},
        ],
        "tools": tools,
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }  # fmt: skip
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "context-management-2025-06-27,prompt-caching-scope-2026-01-05,effort-2025-11-24,"
        "advanced-tool-use-2025-11-20,fine-grained-tool-streaming-2025-05-14",
        "x-api-key": "sk-ant-anything",
        "x-app": "cli",
        "anthropic-dangerous-direct-browser-access": "true",
        "x-stainless-lang": "js",
    }
    assert len(json.dumps(body)) > 30_000
    url = f"{gateway.url}/v1/messages?beta=true"
    # As sent (max_tokens 32000): accepted and streaming; leaving early cancels it.
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        names = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
            if "content_block_delta" in names:
                break
    assert names[0] == "message_start"
    # The same request with a small max_tokens runs to the end (the tiny model does not
    # know when to stop after a prompt this size).
    names = []
    with httpx.stream(
        "POST", url, json={**body, "max_tokens": 48}, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert httpx.head(f"{gateway.url}/api/hello", timeout=10).status_code == 200


def test_models_in_anthropic_shape_and_metrics(fleet: tuple[Neuron, Gateway]) -> None:
    gateway = fleet[1]
    page = _client(gateway).models.list(limit=1)
    assert page.data[0].type == "model"
    assert page.has_more
    everything = {m.id for m in _client(gateway).models.list(limit=100)}
    assert {"trained", "m1"} <= everything
    text = gateway.metrics()
    served = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "cortex_requests_total" and s.labels.get("dialect") == "anthropic"
    )
    assert served >= 5
