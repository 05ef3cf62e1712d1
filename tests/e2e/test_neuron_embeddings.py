"""A real neuron process serving the tiny embedding models, talked to with the official
``openai`` SDK: its vectors against plain transformers, on the SDK's wire formats."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.e2e.procs import Neuron
from tests.neuron.test_embeddings import TEXTS, TOLERANCE, reference

pytestmark = pytest.mark.e2e

POOLINGS = ("mean", "cls", "lasttoken")


@pytest.fixture(scope="module")
def embedding_neuron(
    tmp_path_factory: pytest.TempPathFactory,
    embedding_models: dict[str, Path],
    tiny_model: Path,
) -> Iterator[Neuron]:
    """A neuron whose model dir holds the embedding fixtures (``embed-<pooling>``) and the
    tiny chat model (``tiny``); the embedding models are loaded through /models/load."""
    root = tmp_path_factory.mktemp("embedding-models")
    for pooling, folder in embedding_models.items():
        shutil.copytree(folder, root / f"embed-{pooling}")
    shutil.copytree(tiny_model, root / "tiny")
    log = tmp_path_factory.mktemp("embedding-neuron") / "neuron.log"
    process = Neuron(["--model-dir", str(root), "--preload", "tiny", "--name", "e2e"], log)
    try:
        process.wait_ready()
        for pooling in POOLINGS:
            loaded = process.post("/models/load", json={"model": f"embed-{pooling}"})
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["type"] == "embedding"
        process.wait_loaded("tiny")
        yield process
    finally:
        process.stop()


def _client(neuron: Neuron) -> OpenAI:
    return OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_openai_sdk_gets_the_vectors_of_plain_transformers(
    embedding_neuron: Neuron, embedding_models: dict[str, Path], pooling: str
) -> None:
    client = _client(embedding_neuron)
    model = f"embed-{pooling}"
    want = reference(embedding_models[pooling], pooling, TEXTS)
    # Without encoding_format the SDK asks for base64 and decodes it into floats itself.
    default = client.embeddings.create(model=model, input=TEXTS)
    floats = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    for reply in (default, floats):
        assert reply.model == model
        assert [item.index for item in reply.data] == list(range(len(TEXTS)))
        got = np.array([item.embedding for item in reply.data])
        assert got.shape == want.shape
        assert np.abs(got - want).max() < TOLERANCE
    # Asked for by name, base64 comes back as the server sent it: float32 little-endian.
    raw = client.embeddings.create(model=model, input=TEXTS, encoding_format="base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(str(item.embedding)), dtype="<f4") for item in raw.data]
    )
    assert np.abs(decoded - want).max() < TOLERANCE
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(TEXTS)


def test_the_sdk_passes_dimensions_and_token_ids(
    embedding_neuron: Neuron, embedding_models: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    client = _client(embedding_neuron)
    tokenizer = AutoTokenizer.from_pretrained(str(embedding_models["lasttoken"]))
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    reply = client.embeddings.create(model="embed-lasttoken", input=ids, dimensions=16)
    want = reference(embedding_models["lasttoken"], "lasttoken", TEXTS)[:, :16]
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    got = np.array([item.embedding for item in reply.data])
    assert np.abs(got - want).max() < TOLERANCE
    assert reply.usage.prompt_tokens == sum(len(row) for row in ids)


def test_wrong_requests_are_400s_the_sdk_raises(embedding_neuron: Neuron) -> None:
    client = _client(embedding_neuron)
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="embed-mean", input=[])
    assert empty.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="does not serve embeddings"):
        client.embeddings.create(model="tiny", input="hi")
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(
            model="embed-mean", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError, match="32 dimensions"):
        client.embeddings.create(model="embed-mean", input="hi", dimensions=64)


def test_node_reports_the_embedding_models(embedding_neuron: Neuron) -> None:
    records = {m["id"]: m for m in embedding_neuron.get("/node").json()["models"]}
    assert records["embed-mean"]["type"] == "embedding"
    assert records["embed-mean"]["kv_cache_bytes"] == 0
    assert records["embed-mean"]["memory_bytes"] > 0
    assert records["tiny"]["type"] == "chat"
    _client(embedding_neuron).embeddings.create(model="embed-mean", input="hi")
    metrics = embedding_neuron.get("/metrics").text
    assert 'cortex_neuron_requests_total{finish_reason="embedded",model="embed-mean"}' in metrics
