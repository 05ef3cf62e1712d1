"""Structured outputs through a real neuron: a model whose free output is random tokens writes
JSON that validates, calls that match their tools, and what vLLM's extension fields ask for,
every time; free sequences batched with constrained ones are not changed by them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from cortex.testing import FIXTURES
from cortex.testing.random_model import cached_random_model
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "vip": {"type": "boolean"},
                "visits": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
            },
            "required": ["city", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "age", "tags", "owner"],
    "additionalProperties": False,
}

BOOK = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a table.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "maxLength": 16},
                "people": {"type": "integer", "minimum": 1, "maximum": 12},
                "seating": {"enum": ["inside", "terrace"]},
                "extras": {
                    "type": "object",
                    "properties": {"cake": {"type": "boolean"}},
                    "required": ["cake"],
                    "additionalProperties": False,
                },
            },
            "required": ["restaurant", "people", "seating", "extras"],
            "additionalProperties": False,
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (BOOK, WEATHER)}
SAMPLES = 100


@pytest.fixture(scope="module")
def random_neuron(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, trained_model: Path
) -> Iterator[Neuron]:
    """A neuron with the random model and, for reasoning, the trained one."""
    path = cached_random_model(model_cache)
    log = tmp_path_factory.mktemp("structured-neuron") / "neuron.log"
    paths = ["--allowed-path", str(path), "--allowed-path", str(trained_model)]
    models = ["--preload", f"random={path}", "--preload", f"trained={trained_model}"]
    neuron = Neuron([*models, *paths], log)
    try:
        neuron.wait_ready()
        neuron.wait_loaded("random")
        neuron.wait_loaded("trained")
        yield neuron
    finally:
        neuron.stop()


def _chat(neuron: Neuron, **body: Any) -> httpx.Response:
    """A chat request to the random model, thinking off unless asked (it would open reasoning
    itself and rarely close it)."""
    body = {
        "model": "random",
        "messages": [{"role": "user", "content": "Answer."}],
        "chat_template_kwargs": {"enable_thinking": False},
        **body,
    }
    return neuron.post("/v1/chat/completions", json=body)


def _samples(neuron: Neuron, **body: Any) -> list[dict[str, Any]]:
    """``SAMPLES`` seeded choices, sampled at temperature 1 (16 per request)."""
    choices: list[dict[str, Any]] = []
    seed = 0
    while len(choices) < SAMPLES:
        n = min(16, SAMPLES - len(choices))
        reply = _chat(neuron, n=n, seed=seed, temperature=1.0, **body)
        assert reply.status_code == 200, reply.text
        choices += reply.json()["choices"]
        seed += 1000
    return choices


def test_json_schema_validates_every_time(random_neuron: Neuron) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}
    choices = _samples(random_neuron, response_format=response_format, max_tokens=300)
    texts = [c["message"]["content"] for c in choices]
    for text in texts:
        jsonschema.validate(json.loads(text), PET)
    assert len(set(texts)) > SAMPLES // 2  # random output, held to the schema
    for text in texts:  # compact: outside strings, one space after "," and ":" and none else
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
        assert bare == bare.strip(), text
        assert "  " not in bare, text
        assert "\n" not in bare, text


def test_json_object_parses_even_at_the_length_limit(random_neuron: Neuron) -> None:
    choices = _samples(random_neuron, response_format={"type": "json_object"}, max_tokens=96)
    for choice in choices:
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    # The random model's strings run long: most answers were closed as the limit came.
    assert sum(c["finish_reason"] == "length" for c in choices) + sum(
        c["finish_reason"] == "stop" for c in choices
    ) == len(choices)
    assert any(c["usage"] if "usage" in c else c["finish_reason"] == "stop" for c in choices)


@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_forced_calls_match_their_tools(random_neuron: Neuron, tool_choice: str) -> None:
    choice: Any = tool_choice
    if tool_choice == "named":
        choice = {"type": "function", "function": {"name": "book_table"}}
    choices = _samples(
        random_neuron,
        tools=[BOOK, WEATHER],
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=200,
    )
    names = set()
    for c in choices:
        assert c["finish_reason"] == "tool_calls", c
        for call in c["message"]["tool_calls"]:
            name = call["function"]["name"]
            names.add(name)
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    assert names <= ({"book_table"} if tool_choice == "named" else {"book_table", "get_weather"})


def test_auto_with_strict_tools_constrains_calls_it_opens(random_neuron: Neuron) -> None:
    choices = _samples(random_neuron, tools=[BOOK, WEATHER], max_tokens=64)
    for c in choices:
        for call in c["message"].get("tool_calls") or []:
            name = call["function"]["name"]
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def test_reasoning_is_free_and_the_answer_is_constrained(random_neuron: Neuron) -> None:
    """The trained model reasons (its fixture) before the answer, held to the schema."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reasoning = FIXTURES["reasoning"]
    reply = random_neuron.post(
        "/v1/chat/completions",
        json={
            "model": "trained",
            "messages": reasoning.message_list(),
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
            "max_tokens": 60,
        },
    )
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    thought = message.get("reasoning_content") or message.get("reasoning")
    assert thought == "The user wants 2 + 2. That is 4."  # the fixture's, as it wrote it
    jsonschema.validate(json.loads(message["content"]), schema)


def test_structured_outputs_extension(random_neuron: Neuron) -> None:
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"regex": r"[a-z]{3}-[0-9]{2}"}, lambda t: re.fullmatch(r"[a-z]{3}-[0-9]{2}", t)),
        ({"json": PET}, lambda t: jsonschema.validate(json.loads(t), PET) is None),
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
        ({"grammar": 'root ::= "yes" | "no" | "maybe"'}, lambda t: t in ("yes", "no", "maybe")),
        ({"grammar": 'start: "x" NUM\nNUM: /[0-9]{2}/'}, lambda t: re.fullmatch(r"x[0-9]{2}", t)),
    ]
    for spec, ok in cases:
        reply = _chat(
            random_neuron, structured_outputs=spec, n=8, seed=3, temperature=1.0, max_tokens=120
        )
        assert reply.status_code == 200, (spec, reply.text)
        for choice in reply.json()["choices"]:
            assert ok(choice["message"]["content"]), (spec, choice)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: @@ nonsense"}}, "structured_outputs.grammar"),
        (
            {"tools": [{**BOOK, "function": {**BOOK["function"], "parameters": {"type": 3}}}]},
            "tools",
        ),
    ],
)
def test_a_bad_constraint_is_a_400_naming_it(
    random_neuron: Neuron, body: dict[str, Any], param: str
) -> None:
    reply = _chat(random_neuron, **body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_free_sequences_are_unchanged_by_constrained_ones(random_neuron: Neuron) -> None:
    free = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    alone = [_chat(random_neuron, **free).json()["choices"][0]["message"]["content"]]
    response_format = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}
    with ThreadPoolExecutor(8) as pool:
        constrained = [
            pool.submit(
                _chat, random_neuron, response_format=response_format, n=4, seed=i, max_tokens=200
            )
            for i in range(6)
        ]
        mixed = [pool.submit(_chat, random_neuron, **free) for _ in range(2)]
        replies = [f.result() for f in mixed]
        for future in constrained:
            assert future.result().status_code == 200
    for reply in replies:
        assert reply.json()["choices"][0]["message"]["content"] == alone[0]


class Owner(BaseModel):
    city: str = Field(max_length=10)
    vip: bool


class Pet(BaseModel):
    name: str = Field(max_length=12)
    kind: Literal["cat", "dog", "bird"]
    age: int = Field(ge=0, le=30)
    owner: Owner


def test_openai_sdk_parse_returns_the_model(random_neuron: Neuron) -> None:
    client = OpenAI(base_url=f"{random_neuron.url}/v1", api_key="unused", max_retries=0)
    for seed in range(5):
        completion = client.chat.completions.parse(
            model="random",
            messages=[{"role": "user", "content": "A pet, please."}],
            response_format=Pet,
            seed=seed,
            temperature=1.0,
            max_tokens=200,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Pet)


def test_openai_sdk_responses_parse_returns_the_model(random_neuron: Neuron) -> None:
    client = OpenAI(base_url=f"{random_neuron.url}/v1", api_key="unused", max_retries=0)
    for seed in range(3):
        response = client.responses.parse(
            model="random",
            input="A pet, please.",
            text_format=Pet,
            temperature=1.0,
            max_output_tokens=200,
            reasoning={"effort": "none"},  # thinking off (the random model never ends it)
            extra_body={"seed": seed},
        )
        assert isinstance(response.output_parsed, Pet)


@pytest.fixture(scope="module")
def gateway(random_neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = '[[models]]\nid = "random"\n[aliases]\n"claude-*" = "random"\n'
    gateway = Gateway({"a": random_neuron}, models, tmp_path_factory.mktemp("structured-gw"))
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


class Home(BaseModel):
    city: str
    floors: list[int]


class Card(BaseModel):
    """What Anthropic's structured outputs take: its SDK moves length and range limits into
    descriptions, so strings and numbers are free here (and close as the limit comes)."""

    name: str
    kind: Literal["cat", "dog", "bird"]
    age: int
    vip: bool
    home: Home


def test_anthropic_sdk_structured_outputs_through_the_gateway(gateway: Gateway) -> None:
    """100 of 100: ``output_config.format``, as ``messages.parse`` sends it."""
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)

    def one(i: int) -> Any:
        return client.messages.parse(
            model="claude-sonnet-4-6",
            max_tokens=300,
            thinking={"type": "disabled"},
            messages=[{"role": "user", "content": f"Pet number {i}, please."}],
            output_format=Card,
            extra_body={"temperature": 1.0},
        )

    with ThreadPoolExecutor(8) as pool:
        messages = list(pool.map(one, range(SAMPLES)))
    for message in messages:
        assert isinstance(message.parsed_output, Card), message


def test_anthropic_sdk_strict_tool_through_the_gateway(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    book = BOOK["function"]
    tool = {"name": book["name"], "input_schema": book["parameters"], "strict": True}
    for i in range(8):
        message = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=200,
            thinking={"type": "disabled"},
            messages=[{"role": "user", "content": f"Book table {i}."}],
            extra_body={"temperature": 1.0},
            tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "book_table", "disable_parallel_tool_use": True},
        )
        assert message.stop_reason == "tool_use", message
        (use,) = [block for block in message.content if block.type == "tool_use"]
        jsonschema.validate(use.input, book["parameters"])
