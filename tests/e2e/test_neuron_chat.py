"""A real neuron process, talked to with the official ``openai`` SDK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from cortex.testing import FIXTURES
from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Tell me about the river."}]


def _client(neuron: Neuron) -> OpenAI:
    return OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)


def _reference(
    model_path: Path, messages: list[dict[str, Any]], max_new_tokens: int
) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) from transformers' own greedy generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    generated = out[0, ids.shape[1] :].tolist()
    return tokenizer.decode(generated, skip_special_tokens=True), ids.shape[1], len(generated)


def test_non_stream_greedy_equals_transformers_generate(neuron: Neuron, tiny_model: Path) -> None:
    reply = _client(neuron).chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    text, prompt_tokens, completion_tokens = _reference(tiny_model, PROMPT, 16)
    assert reply.choices[0].message.content == text
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == "tiny"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        prompt_tokens,
        completion_tokens,
    )
    assert reply.usage.total_tokens == prompt_tokens + completion_tokens
    assert reply.choices[0].finish_reason == ("length" if completion_tokens == 16 else "stop")


def test_stream_joins_to_the_same_text_with_usage_last(neuron: Neuron, tiny_model: Path) -> None:
    chunks = list(
        _client(neuron).chat.completions.create(
            model="tiny",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text, prompt_tokens, completion_tokens = _reference(tiny_model, PROMPT, 16)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length" if completion_tokens == 16 else "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.completion_tokens == completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(neuron: Neuron) -> None:
    chunks = list(
        _client(neuron).chat.completions.create(
            model="tiny",
            messages=PROMPT,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_trained_fixture_plain_answer_comes_back_exactly(neuron: Neuron) -> None:
    neuron.post("/models/load", json={"model": "trained"}).raise_for_status()
    fixture = FIXTURES["plain"]
    client = _client(neuron)
    reply = client.chat.completions.create(model="trained", messages=fixture.message_list())  # type: ignore[arg-type]
    assert reply.choices[0].message.content == fixture.reply
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="trained",
        messages=fixture.message_list(),
        stream=True,  # type: ignore[arg-type]
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == fixture.reply


def test_stop_string_ends_the_reply_without_including_it(neuron: Neuron) -> None:
    neuron.post("/models/load", json={"model": "trained"}).raise_for_status()
    fixture = FIXTURES["plain"]
    reply = _client(neuron).chat.completions.create(
        model="trained",
        messages=fixture.message_list(),
        stop=["tiny mod"],  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == fixture.reply.split("tiny mod")[0]
    assert reply.choices[0].finish_reason == "stop"


def test_seed_reproduces_a_sampled_reply(neuron: Neuron) -> None:
    client = _client(neuron)

    def sample(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model="tiny",
            messages=PROMPT,
            max_tokens=12,
            temperature=1.0,
            seed=seed,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content

    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in range(5)}) > 1


def test_content_as_text_parts_and_system_and_developer_roles(neuron: Neuron) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a fact."}],
        },
    ]
    reply = _client(neuron).chat.completions.create(model="tiny", messages=messages, max_tokens=3)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 3


def _in_flight(neuron: Neuron, model: str) -> int:
    records = {r["id"]: r for r in neuron.get("/node").json()["models"]}
    return int(records[model]["in_flight"]) + int(records[model]["queued"])


def _wait_idle(neuron: Neuron, model: str) -> None:
    deadline = time.monotonic() + 10
    while _in_flight(neuron, model) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(neuron, model) == 0


def test_stream_client_disconnect_stops_generation(neuron: Neuron) -> None:
    body = {
        "model": "tiny",
        "messages": PROMPT,
        "max_tokens": 60000,
        "ignore_eos": True,
        "stream": True,
        # Sampled, so that the untrained model writes words (greedy, it only writes
        # newlines, which are held back until something else follows).
        "temperature": 1.0,
        "seed": 7,
    }
    with httpx.stream(
        "POST", f"{neuron.url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
        assert _in_flight(neuron, "tiny") == 1
    _wait_idle(neuron, "tiny")


def test_non_stream_client_disconnect_stops_generation(neuron: Neuron) -> None:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 60000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{neuron.url}/v1/chat/completions", json=body, timeout=1.0)
    _wait_idle(neuron, "tiny")


def test_v1_models_lists_ready_models(neuron: Neuron) -> None:
    ids = [m.id for m in _client(neuron).models.list()]
    assert "tiny" in ids
