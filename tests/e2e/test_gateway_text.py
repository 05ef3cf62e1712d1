"""Text completions (fill in the middle) and embeddings through a real gateway in front of a
real neuron, with the official ``openai`` SDK: loaded on demand, behind keys, counted under
their own dialect, and listed with what each model serves."""

from __future__ import annotations

import base64
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from cortex.testing.fim import FIM_FIXTURES
from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

KEY, OTHER = "sk-coder-0123", "sk-chat-4567"
KEYS = f"""[[keys]]
name = "coder"
key = "{KEY}"
models = ["coder", "embedder", "tiny"]
[[keys]]
name = "chat-only"
key = "{OTHER}"
models = ["tiny"]
"""
INPUTS = ["a", "a somewhat longer sentence to embed", "mid length text"]


@dataclass
class Fleet:
    neuron: Neuron
    gateway: Gateway


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    fim_model: Path,
    embedding_models: dict[str, Path],
    tiny_model: Path,
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("text-models")
    shutil.copytree(fim_model, root / "coder")
    shutil.copytree(embedding_models["mean"], root / "embedder")
    shutil.copytree(tiny_model, root / "tiny")
    logs = tmp_path_factory.mktemp("text-fleet")
    neuron = Neuron(["--model-dir", str(root), "--name", "a"], logs / "neuron.log")
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        gateway = Gateway({"a": neuron}, "", logs / "gateway", top=KEYS)
        gateway.wait_ready()
        yield Fleet(neuron, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _client(fleet: Fleet, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{fleet.gateway.url}/v1", api_key=key, max_retries=0)


def _metric_lines(fleet: Fleet, dialect: str) -> list[str]:
    text = httpx.get(f"{fleet.gateway.metrics_url}/metrics", timeout=10).text
    return [
        line
        for line in text.splitlines()
        if line.startswith("cortex_requests_total") and f'dialect="{dialect}"' in line
    ]


def test_fill_in_the_middle_through_the_gateway_streaming_and_not(fleet: Fleet) -> None:
    fixture = FIM_FIXTURES[0]
    client = _client(fleet)
    whole = client.completions.create(
        model="coder",
        prompt=fixture.prompt,
        suffix=fixture.suffix,
        max_tokens=24,
        temperature=0,
    )
    assert whole.choices[0].text == fixture.completion
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    pieces = client.completions.create(
        model="coder",
        prompt=fixture.prompt,
        suffix=fixture.suffix,
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    assert "".join(chunk.choices[0].text for chunk in pieces if chunk.choices) == fixture.completion
    assert any('status="200"' in line for line in _metric_lines(fleet, "completions"))


def test_a_suffix_for_a_model_without_fim_tokens_is_a_400(fleet: Fleet) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(fleet).completions.create(model="tiny", prompt="def f(", suffix=")", max_tokens=4)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["param"] == "suffix"


def _reference(fleet: Fleet, inputs: list[str]) -> list[list[float]]:
    """The same model's vectors asked of the neuron directly."""
    body = {"model": "embedder", "input": inputs}
    got = httpx.post(f"{fleet.neuron.url}/v1/embeddings", json=body, timeout=60)
    assert got.status_code == 200
    return [item["embedding"] for item in got.json()["data"]]


def test_embeddings_through_the_gateway_as_floats_and_base64(fleet: Fleet) -> None:
    client = _client(fleet)
    floats = client.embeddings.create(model="embedder", input=INPUTS)
    vectors = [item.embedding for item in floats.data]
    assert [item.index for item in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens > len(INPUTS)
    reference = _reference(fleet, INPUTS)
    for got, want in zip(vectors, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    raw = httpx.post(
        f"{fleet.gateway.url}/v1/embeddings",
        json={"model": "embedder", "input": INPUTS, "encoding_format": "base64"},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    ).json()
    for item, want in zip(raw["data"], reference, strict=True):
        data = base64.b64decode(item["embedding"])
        got = struct.unpack(f"<{len(data) // 4}f", data)
        assert got == pytest.approx(want, abs=1e-6)
    assert any('status="200"' in line for line in _metric_lines(fleet, "embeddings"))


def test_each_endpoint_refuses_a_model_of_the_other_kind_and_keys_hold(fleet: Fleet) -> None:
    client = _client(fleet)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model="embedder", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert "embedding model" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as wrong:
        client.embeddings.create(model="tiny", input="hi")
    assert "does not serve embeddings" in str(wrong.value)
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="embedder", input=[])
    assert empty.value.status_code == 400
    with pytest.raises(openai.NotFoundError):  # a key that may not use it does not see it
        _client(fleet, OTHER).embeddings.create(model="embedder", input="hi")
    with pytest.raises(openai.AuthenticationError):
        _client(fleet, "sk-wrong").completions.create(model="coder", prompt="x", max_tokens=2)


def test_the_catalogue_says_what_each_model_serves(fleet: Fleet) -> None:
    listed = {m.id: m.model_extra or {} for m in _client(fleet).models.list()}
    assert listed["embedder"]["type"] == "embedding"
    assert listed["embedder"]["endpoints"] == ["/v1/embeddings"]
    assert listed["coder"]["type"] == "chat"
    assert "/v1/completions" in listed["coder"]["endpoints"]
