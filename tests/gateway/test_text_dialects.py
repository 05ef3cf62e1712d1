"""Text completions and embeddings through the gateway, in front of fake neurons: relayed as
they came, counted under their own ``dialect``, and refused before any load when the model
serves the other kind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cortex.config import GatewaySection, ModelProfile, ModelsConfig
from cortex.gateway.http import HttpRequest, Responder
from tests.gateway.test_proxy import serve_fleet

USAGE = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _text_chunk(text: str, finish: str | None = None) -> bytes:
    return _event(
        {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "coder",
         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    )  # fmt: skip


@dataclass
class FakeTextNeuron:
    """A neuron's /v1/completions and /v1/embeddings."""

    die_mid_stream: bool = False
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, request: HttpRequest, responder: Responder) -> None:
        body = json.loads(request.body)
        self.calls.append((request.path, body))
        if request.path == "/v1/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}]
            usage = {"prompt_tokens": 5, "total_tokens": 5}
            reply = {"object": "list", "data": data, "model": body["model"], "usage": usage}
            responder.respond(200, json.dumps(reply).encode())
            return
        if not body.get("stream"):
            choice = {"index": 0, "text": "c = a + b", "finish_reason": "stop"}
            reply = {"id": "cmpl-1", "object": "text_completion", "created": 1,
                     "model": body["model"], "usage": USAGE, "choices": [choice]}  # fmt: skip
            responder.respond(200, json.dumps(reply).encode())
            return
        responder.start(200, [(b"content-type", b"text/event-stream")])
        for piece in ("c = ", "a + b"):
            await responder.write(_text_chunk(piece))
            await asyncio.sleep(0.01)
            if self.die_mid_stream:
                raise RuntimeError("the neuron's process died")
        await responder.write(_text_chunk("", "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await responder.write(_event({"id": "cmpl-1", "choices": [], "usage": USAGE}))
        responder.end(b"data: [DONE]\n\n")


@dataclass
class TextRig:
    url: str
    app: Any
    neuron: FakeTextNeuron


@pytest.fixture
async def rig() -> AsyncIterator[TextRig]:
    neuron = FakeTextNeuron()
    models = ModelsConfig(
        models=[
            ModelProfile(id="coder", neurons=["a"]),
            ModelProfile(id="embedder", neurons=["a"], type="embedding"),
        ]
    )
    gateway = GatewaySection(poll_interval=0.05, request_timeout=5.0, load_timeout=5)
    sizes = {"coder": 100, "embedder": 100}
    async with serve_fleet({"a": neuron}, sizes, models, gateway) as (url, app, _):
        yield TextRig(url, app, neuron)


async def _post(rig: TextRig, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{rig.url}{path}", json=body, headers=headers)


def _counted(rig: TextRig, dialect: str) -> bool:
    metrics = rig.app.metrics.render().decode()
    return f'dialect="{dialect}"' in metrics


async def test_a_completion_is_relayed_and_counted_as_completions(rig: TextRig) -> None:
    body = {"model": "coder", "prompt": "def add(a, b):", "suffix": "return c"}
    whole = await _post(rig, "/v1/completions", body)
    assert whole.status_code == 200
    assert whole.json()["choices"][0]["text"] == "c = a + b"
    assert rig.neuron.calls[-1] == ("/v1/completions", body)  # passed on untouched
    assert _counted(rig, "completions")
    metrics = rig.app.metrics.render().decode()
    assert 'cortex_generation_tokens_total{model="coder",node="a"} 3.0' in metrics


async def test_a_completion_stream_gets_its_usage_asked_for_and_removed_unless_wanted(
    rig: TextRig,
) -> None:
    plain = await _post(rig, "/v1/completions", {"model": "coder", "prompt": "x", "stream": True})
    assert rig.neuron.calls[-1][1]["stream_options"] == {"include_usage": True}
    assert plain.status_code == 200
    assert b'"usage"' not in plain.content
    texts = [
        json.loads(line[6:])["choices"][0]["text"]
        for line in plain.text.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(texts) == "c = a + b"
    assert plain.content.endswith(b"data: [DONE]\n\n")
    wanted = await _post(
        rig,
        "/v1/completions",
        {
            "model": "coder",
            "prompt": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert b'"usage":{"prompt_tokens":4' in wanted.content
    metrics = rig.app.metrics.render().decode()
    assert 'cortex_generation_tokens_total{model="coder",node="a"} 6.0' in metrics
    ttft = 'cortex_time_to_first_token_seconds_count{dialect="completions",model="coder",node="a"}'
    assert f"{ttft} 2.0" in metrics


async def test_a_completion_stream_cut_mid_way_ends_with_an_error_chunk(rig: TextRig) -> None:
    rig.neuron.die_mid_stream = True
    cut = await _post(rig, "/v1/completions", {"model": "coder", "prompt": "x", "stream": True})
    assert cut.status_code == 200
    events = [line for line in cut.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2][6:])["error"]["message"].startswith("The neuron failed")
    assert events[-1] == "data: [DONE]"


async def test_embeddings_are_relayed_whole_and_never_streamed(rig: TextRig) -> None:
    got = await _post(rig, "/v1/embeddings", {"model": "embedder", "input": "hello"})
    assert got.status_code == 200
    assert got.json()["data"][0]["embedding"] == [0.6, 0.8]
    assert _counted(rig, "embeddings")
    metrics = rig.app.metrics.render().decode()
    assert 'cortex_prompt_tokens_total{model="embedder",node="a"} 5.0' in metrics
    calls = len(rig.neuron.calls)
    streamed = await _post(
        rig, "/v1/embeddings", {"model": "embedder", "input": "x", "stream": True}
    )
    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "stream"
    assert len(rig.neuron.calls) == calls  # refused before any neuron was asked


async def test_the_wrong_endpoint_for_a_models_kind_is_a_400_in_the_callers_dialect(
    rig: TextRig,
) -> None:
    chat = {"model": "embedder", "messages": [{"role": "user", "content": "hi"}]}
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/completions"):
        body = chat if path == "/v1/chat/completions" else {"model": "embedder", "input": "hi"}
        if path == "/v1/completions":
            body = {"model": "embedder", "prompt": "hi"}
        refused = await _post(rig, path, body)
        assert refused.status_code == 400, path
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "embedding model" in error["message"]
        assert error["param"] == "model"
    anthropic = await _post(
        rig,
        "/v1/messages",
        {"model": "embedder", "max_tokens": 5, "messages": chat["messages"]},
        **{"anthropic-version": "2023-06-01"},
    )
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error"
    assert "embedding model" in anthropic.json()["error"]["message"]
    wrong = await _post(rig, "/v1/embeddings", {"model": "coder", "input": "hi"})
    assert wrong.status_code == 400
    assert "does not serve embeddings" in wrong.json()["error"]["message"]
    assert rig.neuron.calls == []  # nothing was loaded or asked for any of these


async def test_the_catalogue_says_what_each_model_serves(rig: TextRig) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        listed = (await client.get(f"{rig.url}/v1/models")).json()["data"]
    by_id = {m["id"]: m for m in listed}
    assert by_id["embedder"]["type"] == "embedding"
    assert by_id["embedder"]["endpoints"] == ["/v1/embeddings"]
    assert by_id["coder"]["type"] == "chat"
    assert "/v1/completions" in by_id["coder"]["endpoints"]
    assert "/v1/chat/completions" in by_id["coder"]["endpoints"]
