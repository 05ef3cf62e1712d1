"""``POST /v1/embeddings`` in-process: vectors against plain transformers, ``dimensions``,
token-id inputs, usage, and every bad input a 400 in the OpenAI envelope."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import torch

from cortex.config import NeuronConfig
from cortex.errors import InsufficientMemory
from cortex.neuron.app import NeuronApp
from cortex.neuron.devices import discover
from cortex.protocol.lifecycle import LoadRequest

# How each fixture pools and whether it normalises, written out rather than read back.
NORMALIZES = {"mean": True, "cls": False, "lasttoken": True}
TEXTS = [
    "Hi.",
    "What is the weather in Lima today?",
    "The river ran past the old mill, and the miller counted the sacks of flour "
    "while the wind turned the sails above the yard, slowly, all afternoon long.",
    "Reykjavík",
]
TOLERANCE = 1e-5

pytestmark = pytest.mark.asyncio(loop_scope="module")


def reference(folder: Path, pooling: str, inputs: Sequence[str | list[int]]) -> np.ndarray:
    """Each input alone through plain transformers (no batch, no padding), pooled and
    normalised as the fixture's sentence-transformers files say: [N, H]."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    vectors = []
    for item in inputs:
        ids = tokenizer(item)["input_ids"] if isinstance(item, str) else item
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # [S, H]
        if pooling == "mean":
            vector = hidden.mean(dim=0)
        elif pooling == "cls":
            vector = hidden[0]
        else:
            vector = hidden[-1]
        if NORMALIZES[pooling]:
            vector = vector / vector.norm()
        vectors.append(vector.numpy())
    return np.stack(vectors)


def vectors_of(body: dict[str, Any]) -> np.ndarray:
    """The reply's vectors, floats or base64 (little-endian float32) alike: [N, D]."""
    rows = []
    for i, item in enumerate(body["data"]):
        assert item["object"] == "embedding"
        assert item["index"] == i
        value = item["embedding"]
        if isinstance(value, str):
            rows.append(np.frombuffer(base64.b64decode(value), dtype="<f4"))
        else:
            rows.append(np.array(value, dtype=np.float64))
    return np.stack(rows)


class Node:
    def __init__(self, app: NeuronApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def embed(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/embeddings", json=body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(embedding_models: dict[str, Path], tiny_model: Path) -> AsyncIterator[Node]:
    """A neuron app with the three embedding fixtures (named by pooling) and the tiny chat
    model (``chat``) loaded, spoken to in-process; one per module (tests only read it)."""
    folders = {**embedding_models, "chat": tiny_model}
    app = NeuronApp(NeuronConfig(name="t", allowed_paths=list(folders.values())), discover())
    for name, folder in folders.items():
        await app.registry.load(LoadRequest(model=name, source=str(folder)))
    transport = httpx.ASGITransport(app=app.build())
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://neuron") as client:
            yield Node(app, client)
    finally:
        await app.registry.aclose()


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
async def test_vectors_equal_plain_transformers_one_input_at_a_time(
    node: Node, embedding_models: dict[str, Path], pooling: str, encoding_format: str
) -> None:
    response = await node.embed(model=pooling, input=TEXTS, encoding_format=encoding_format)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert (body["object"], body["model"]) == ("list", pooling)
    assert all(set(item) == {"object", "index", "embedding"} for item in body["data"])
    kind = str if encoding_format == "base64" else list
    assert all(isinstance(item["embedding"], kind) for item in body["data"])
    got = vectors_of(body)
    want = reference(embedding_models[pooling], pooling, TEXTS)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOLERANCE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedding_models[pooling]))
    tokens = sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
async def test_dimensions_truncate_and_renormalise_where_the_model_normalises(
    node: Node, pooling: str
) -> None:
    full = vectors_of((await node.embed(model=pooling, input=TEXTS)).json())
    response = await node.embed(model=pooling, input=TEXTS, dimensions=8)
    assert response.status_code == 200, response.text
    short = vectors_of(response.json())
    assert short.shape == (len(TEXTS), 8)
    want = full[:, :8]
    if NORMALIZES[pooling]:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
        assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=TOLERANCE)
    assert np.abs(short - want).max() < TOLERANCE
    # The model's whole width is a valid choice, and changes nothing.
    whole = await node.embed(model=pooling, input=TEXTS, dimensions=full.shape[1])
    assert np.abs(vectors_of(whole.json()) - full).max() < TOLERANCE


@pytest.mark.parametrize("pooling", ["mean", "lasttoken"])
async def test_token_ids_give_the_vectors_of_the_text_they_encode(
    node: Node, embedding_models: dict[str, Path], pooling: str
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedding_models[pooling]))
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    by_text = (await node.embed(model=pooling, input=TEXTS)).json()
    by_ids = (await node.embed(model=pooling, input=ids)).json()
    assert np.abs(vectors_of(by_text) - vectors_of(by_ids)).max() < TOLERANCE
    assert by_ids["usage"] == by_text["usage"]
    one = (await node.embed(model=pooling, input=ids[1])).json()  # one input as token ids
    assert np.abs(vectors_of(one)[0] - vectors_of(by_text)[1]).max() < TOLERANCE
    assert one["usage"]["prompt_tokens"] == len(ids[1])


async def test_concurrent_requests_share_batches_and_get_their_own_vectors(
    node: Node, embedding_models: dict[str, Path]
) -> None:
    alone = [vectors_of((await node.embed(model="mean", input=[t])).json()) for t in TEXTS]
    together = await asyncio.gather(*(node.embed(model="mean", input=[t]) for t in TEXTS * 3))
    for i, response in enumerate(together):
        assert np.abs(vectors_of(response.json()) - alone[i % len(TEXTS)]).max() < TOLERANCE


async def test_the_record_says_embedding_and_has_no_kv_cache(node: Node) -> None:
    record = node.app.registry.record("mean")
    assert (record.type, record.engine, record.kv_cache_bytes) == ("embedding", "transformers", 0)
    assert not record.capabilities.tools
    assert record.context_length == 128
    assert node.app.registry.record("chat").type == "chat"
    cards = {c["id"]: c for c in (await node.client.get("/v1/models")).json()["data"]}
    assert cards["lasttoken"]["type"] == "embedding"
    assert cards["chat"]["type"] == "chat"


def _envelope(response: httpx.Response, param: str | None) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert {"message", "type", "param", "code"} <= set(error)
    assert "Traceback" not in response.text
    return str(error["message"])


LONG = "the river ran past the mill " * 40  # well past the fixtures' 128 tokens


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty array"),
        ({"input": [[]]}, "input", "empty array of token ids"),
        ({"input": ["a", ""]}, "input", "item 1"),
        ({"input": 5}, "input", "must be a string"),
        ({"input": [1, "a"]}, "input", "not a token id"),
        ({"input": ["a", [1]]}, "input", "one kind"),
        ({"input": [{"text": "a"}]}, "input", "must be a string"),
        ({"input": None}, "input", "must be a string"),
        ({}, "input", "Field required"),
        ({"input": [[5, 99999]]}, "input", "vocabulary"),
        ({"input": [-1]}, "input", "not a token id"),
        ({"input": ["short", LONG]}, "input", "item 1 has"),
        ({"input": list(range(5, 300))}, "input", "at most 128 tokens"),
        ({"input": "a", "stream": True}, "stream", "not streamed"),
        ({"input": "a", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"input": "a", "dimensions": 33}, "dimensions", "32 dimensions"),
        ({"input": "a", "dimensions": "8"}, "dimensions", "integer"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
    ],
)
async def test_bad_input_is_a_400_in_the_openai_envelope(
    node: Node, body: dict[str, Any], param: str, says: str
) -> None:
    message = _envelope(await node.embed(model="mean", **body), param)
    assert says in message


async def test_too_long_an_input_says_context_length_exceeded(node: Node) -> None:
    response = await node.embed(model="mean", input=LONG)
    _envelope(response, "input")
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_user_and_unknown_fields_are_accepted(node: Node) -> None:
    response = await node.embed(model="mean", input="a", user="someone", priority=3)
    assert response.status_code == 200, response.text


async def test_chat_to_an_embedding_model_and_embeddings_to_a_chat_model_are_400s(
    node: Node,
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    chat = await node.client.post(
        "/v1/chat/completions", json={"model": "mean", "messages": messages}
    )
    assert "embedding model" in _envelope(chat, "model")
    assert "/v1/embeddings" in chat.json()["error"]["message"]
    responses = await node.client.post("/v1/responses", json={"model": "lasttoken", "input": "hi"})
    assert "embedding model" in _envelope(responses, "model")
    completions = await node.client.post("/v1/completions", json={"model": "cls", "prompt": "hi"})
    assert "embedding model" in _envelope(completions, "model")
    embeddings = await node.embed(model="chat", input="hi")
    assert "does not serve embeddings" in _envelope(embeddings, "model")
    unknown = await node.embed(model="nobody", input="hi")
    assert unknown.status_code == 404


async def test_the_memory_estimate_refuses_a_model_that_does_not_fit(
    embedding_models: dict[str, Path],
) -> None:
    folder = embedding_models["mean"]
    config = NeuronConfig(name="t", allowed_paths=[folder], memory_budget=1000)
    app = NeuronApp(config, discover())
    with pytest.raises(InsufficientMemory) as refused:
        await app.registry.load(LoadRequest(model="m", source=str(folder)))
    assert refused.value.status == 507
    assert isinstance(refused.value.extra["needed_bytes"], int)
    assert refused.value.extra["needed_bytes"] > 100_000
    await app.registry.aclose()
