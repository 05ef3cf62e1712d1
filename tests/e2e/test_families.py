"""Every model family through a real neuron and a real gateway, with the official SDKs.

One tiny model per family (``cortex.testing.families``): its tokenizer has the family's special
tokens, its chat template behaves like the real one, and it was trained to give fixed replies in
the family's own format. Each fixture's turn goes through OpenAI chat completions at the neuron
(streaming and not), and through the gateway as Anthropic Messages and as the Responses API:
reasoning, text and tool calls must come out structured on every surface.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from openai import OpenAI

from cortex.testing.families import FAMILIES, FamilyFixture, cached_family_model
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

CASES = [
    pytest.param(family, fixture, id=f"{family}-{fixture.name}")
    for family, spec in FAMILIES.items()
    for fixture in spec.fixtures
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("family-models")
    for name in FAMILIES:
        shutil.copytree(cached_family_model(name, cache_dir=model_cache), root / name)
    logs = tmp_path_factory.mktemp("families")
    preload = [arg for name in FAMILIES for arg in ("--preload", name)]
    # Eighteen models on one neuron: each gets an 8 MiB KV cache (16k tokens of the tiny
    # shape), not its default share of the budget.
    kv = ("--kv-cache-bytes", "8MiB")
    neuron = Neuron(["--model-dir", str(root), "--name", "a", *kv, *preload], logs / "neuron.log")
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        profiles = "".join(f'[[models]]\nid = "{name}"\n' for name in FAMILIES)
        gateway = Gateway({"a": neuron}, profiles, logs / "gateway")
        gateway.wait_ready()
        yield neuron, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _expected(fixture: FamilyFixture) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    e = fixture.expected
    return e.reasoning, e.content, [(name, dict(args)) for name, args in e.calls]


# -- OpenAI chat completions at the neuron --------------------------------------------------


def _chat(neuron: Neuron, family: str, fixture: FamilyFixture, **extra: Any) -> Any:
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    body = {"chat_template_kwargs": dict(fixture.chat_template_kwargs)}
    return client.chat.completions.create(
        model=family,
        messages=fixture.message_list(),  # type: ignore[arg-type]
        tools=fixture.tool_list(),  # type: ignore[arg-type]
        max_tokens=200,
        extra_body=body,
        **extra,
    )


@pytest.mark.parametrize(("family", "fixture"), CASES)
def test_chat_completions(fleet: Any, family: str, fixture: FamilyFixture) -> None:
    reply = _chat(fleet[0], family, fixture)
    choice = reply.choices[0]
    message = choice.message
    reasoning = (getattr(message, "reasoning_content", None) or "").strip()
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert (reasoning, (message.content or "").strip(), calls) == _expected(fixture)
    assert choice.finish_reason == ("tool_calls" if calls else "stop")
    if calls:
        assert len({c.id for c in message.tool_calls}) == len(calls)


@pytest.mark.parametrize(("family", "fixture"), CASES)
def test_chat_completions_streamed(fleet: Any, family: str, fixture: FamilyFixture) -> None:
    reasoning, content, finishes = "", "", []
    calls: dict[int, dict[str, Any]] = {}
    first_deltas: dict[int, Any] = {}
    for chunk in _chat(fleet[0], family, fixture, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        for part in delta.tool_calls or []:
            first_deltas.setdefault(part.index, part)
            call = calls.setdefault(part.index, {"name": "", "arguments": ""})
            call["name"] += (part.function and part.function.name) or ""
            call["arguments"] += (part.function and part.function.arguments) or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    parsed = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    assert (reasoning.strip(), content.strip(), parsed) == _expected(fixture)
    for first in first_deltas.values():  # id, type, name and arguments "" come first
        assert first.id
        assert (first.type, first.function.arguments) == ("function", "")
        assert first.function.name
    assert finishes == ["tool_calls" if parsed else "stop"]


# -- Anthropic Messages through the gateway -------------------------------------------------


def _anthropic_request(fixture: FamilyFixture) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for message in fixture.message_list():
        if message["role"] == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": message["content"],
            }
            messages.append({"role": "user", "content": [block]})
        elif message.get("tool_calls"):
            uses = [
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": call["function"]["name"],
                    "input": json.loads(call["function"]["arguments"]),
                }
                for call in message["tool_calls"]
            ]
            messages.append({"role": "assistant", "content": uses})
        else:
            messages.append({"role": message["role"], "content": message["content"]})
    request: dict[str, Any] = {"messages": messages, "max_tokens": 1100}
    if fixture.tools:
        request["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"],
            }
            for t in fixture.tool_list() or []
        ]
    switch = {**fixture.chat_template_kwargs}
    if switch.get("thinking") or switch.get("enable_thinking"):
        request["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    elif switch.get("enable_thinking") is False or switch.get("thinking") is False:
        request["thinking"] = {"type": "disabled"}
    return request


def _blocks(content: list[Any]) -> tuple[str, str, list[tuple[str, Any]]]:
    thinking = "".join(b.thinking for b in content if b.type == "thinking")
    text = "".join(b.text for b in content if b.type == "text")
    uses = [(b.name, b.input) for b in content if b.type == "tool_use"]
    return thinking.strip(), text.strip(), uses


@pytest.mark.parametrize(("family", "fixture"), CASES)
def test_anthropic_messages(fleet: Any, family: str, fixture: FamilyFixture) -> None:
    client = anthropic.Anthropic(base_url=fleet[1].url, api_key="unused", max_retries=0)
    request = _anthropic_request(fixture)
    message = client.messages.create(model=family, **request)
    assert _blocks(message.content) == _expected(fixture)
    calls = fixture.expected.calls
    assert message.stop_reason == ("tool_use" if calls else "end_turn")
    with client.messages.stream(model=family, **request) as stream:
        streamed = stream.get_final_message()
    assert _blocks(streamed.content) == _expected(fixture)
    assert streamed.stop_reason == message.stop_reason


# -- the Responses API through the gateway --------------------------------------------------


def _responses_input(fixture: FamilyFixture) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in fixture.message_list():
        if message["role"] == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": message["content"],
                }
            )
        elif message.get("tool_calls"):
            items += [
                {
                    "type": "function_call",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
                for call in message["tool_calls"]
            ]
        else:
            items.append({"role": message["role"], "content": message["content"]})
    return items


@pytest.mark.parametrize(("family", "fixture"), CASES)
def test_responses(fleet: Any, family: str, fixture: FamilyFixture) -> None:
    client = OpenAI(base_url=f"{fleet[1].url}/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", **t["function"]} for t in fixture.tool_list() or []]
    switch = fixture.chat_template_kwargs
    reasoning: dict[str, Any] = {}
    if switch.get("thinking") or switch.get("enable_thinking"):
        reasoning = {"reasoning": {"effort": "medium"}}
    elif switch.get("enable_thinking") is False:
        reasoning = {"reasoning": {"effort": "none"}}
    response = client.responses.create(
        model=family,
        input=_responses_input(fixture),  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        max_output_tokens=200,
        **reasoning,
    )
    thought = "".join(
        part.text
        for item in response.output
        if item.type == "reasoning"
        for part in item.content or []
    )
    calls = [
        (item.name, json.loads(item.arguments))
        for item in response.output
        if item.type == "function_call"
    ]
    assert (thought.strip(), response.output_text.strip(), calls) == _expected(fixture)
    assert response.status == "completed"


# -- tool_choice: a call opened in the family's own form ------------------------------------


@pytest.mark.parametrize("choice", ["required", "named"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_forced_tool_choice_gives_the_call(fleet: Any, family: str, choice: str) -> None:
    """The call is opened in the family's own form (after the reasoning of a model whose
    template opened it, or gpt-oss's analysis), and the model writes the rest."""
    fixture = FAMILIES[family].fixture("tool_call")
    forced: Any = choice
    if choice == "named":
        forced = {"type": "function", "function": {"name": "get_weather"}}
    reply = _chat(fleet[0], family, fixture, tool_choice=forced)
    message = reply.choices[0].message
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert calls == [("get_weather", {"city": "Paris"})], message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (getattr(message, "reasoning_content", None) or "").strip() == (
        fixture.expected.reasoning
    )


# -- structured outputs: reasoning first, then the answer held to the schema -----------------

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_json_schema_answer_follows_free_reasoning(fleet: Any, family: str) -> None:
    """Each family reasons as its fixture does (its own syntax: <think>, [THINK], harmony's
    analysis), and its answer, which would be prose, is JSON matching the schema."""
    names = {f.name for f in FAMILIES[family].fixtures}
    fixture = FAMILIES[family].fixture("reasoning" if "reasoning" in names else "plain")
    response_format: Any = {"type": "json_schema", "json_schema": {"schema": ANSWER_SCHEMA}}
    reply = _chat(fleet[0], family, fixture, response_format=response_format)
    message = reply.choices[0].message
    assert (getattr(message, "reasoning_content", None) or "").strip() == (
        fixture.expected.reasoning
    )
    answer = json.loads(message.content or "")
    assert set(answer) == {"answer", "sure"}
    assert isinstance(answer["answer"], int)
