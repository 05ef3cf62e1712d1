"""One bad request harms no one: a poisoned batch through a real neuron.

Four ordinary streams and the bad requests of issue 12 are sent at the same moment to one
model. The bad ones are refused with a 400 naming the field (a denormal temperature is
greedy, not bad), values at the very edges of the ranges run in the same batch, and the four
streams end with the replies they give alone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex.testing.fixtures import FIXTURES
from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

# A template that renders nothing for a conversation without a user turn: what a prompt of
# zero tokens looks like in practice.
_ONLY_WITH_A_USER = (
    "{%- if messages | selectattr('role', 'equalto', 'user') | list -%}\n{}\n{%- endif -%}\n"
)
GOOD = ["plain", "reasoning", "no_thinking", "tool_call"]


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[Neuron]:
    root = tmp_path_factory.mktemp("isolation")
    model = root / "trained"
    shutil.copytree(trained_model, model)
    template = model / "chat_template.jinja"
    template.write_text(_ONLY_WITH_A_USER.replace("{}", template.read_text(), 1))
    process = Neuron(["--model-dir", str(root), "--preload", "trained"], root / "neuron.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _chat(fixture: str, **extra: Any) -> dict[str, Any]:
    f = FIXTURES[fixture]
    body: dict[str, Any] = {"model": "trained", "messages": f.message_list(), **extra}
    if f.tools:
        body["tools"] = f.tool_list()
    if f.chat_template_kwargs:
        body["chat_template_kwargs"] = dict(f.chat_template_kwargs)
    return body


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Everything a chat stream wrote (reasoning, text, call arguments) in order; an error
    event fails the test."""
    out: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                delta = choice["delta"]
                out.append(delta.get("reasoning_content") or "")
                out.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    out.append(call["function"].get("name") or "")
                    out.append(call["function"].get("arguments") or "")
    return "".join(out)


# (path, body, the field the 400 names)
_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", _chat("plain", top_k=2**63, temperature=1.0), "top_k"),
    ("/v1/chat/completions", _chat("plain", seed=2**64, temperature=1.0), "seed"),
    ("/v1/chat/completions", _chat("plain", seed=2**64, temperature=1.0, stream=True), "seed"),
    (
        "/v1/chat/completions",
        _chat("plain", stop_token_ids=[10**6], min_tokens=2),
        "stop_token_ids",
    ),
    (
        "/v1/chat/completions",
        {"model": "trained", "messages": [{"role": "system", "content": "Be brief."}]},
        "messages",
    ),
    ("/v1/responses", {"model": "trained", "input": "Say hello.", "top_k": 2**63}, "top_k"),
    ("/v1/responses", {"model": "trained", "input": "Say hello.", "seed": 2**64}, "seed"),
]
# The very edges of the ranges: accepted, and run in the batch with the others.
_EDGES: list[dict[str, Any]] = [
    _chat("plain", top_k=2**31 - 1, seed=2**63 - 1, temperature=1.0, max_tokens=8),
    _chat("plain", seed=-(2**63), temperature=2.0, top_p=1e-9, max_tokens=8),
    _chat("plain", stop_token_ids=[0], min_tokens=3, max_tokens=8),
]


def test_a_poisoned_batch_harms_no_one(neuron: Neuron) -> None:
    async def crowd() -> tuple[list[str], list[str], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=120) as client:
            alone = [await _stream(client, _chat(name)) for name in GOOD]
            good = [_stream(client, _chat(name)) for name in GOOD]
            bad = [client.post(path, json=body) for path, body, _ in _BAD]
            denormal = client.post("/v1/chat/completions", json=_chat("plain", temperature=1e-320))
            edges = [client.post("/v1/chat/completions", json=body) for body in _EDGES]
            # All at the same moment: the streams, the refused and the served.
            together, answers = await asyncio.gather(
                asyncio.gather(*good), asyncio.gather(*bad, denormal, *edges)
            )
        return alone, together, answers

    alone, together, answers = asyncio.run(crowd())
    refused, served = answers[: len(_BAD)], answers[len(_BAD) :]
    assert together == alone
    assert FIXTURES["plain"].reply in alone[0]
    for (_, _, field), response in zip(_BAD, refused, strict=True):
        assert response.status_code == 400, (field, response.text)
        error = response.json()["error"]
        assert field in error["message"], (field, error)
        assert error["type"] == "invalid_request_error"
    # A denormal temperature is greedy: the fixture's reply, not "!!!!!!!!".
    denormal = served[0]
    assert denormal.status_code == 200, denormal.text
    assert denormal.json()["choices"][0]["message"]["content"] == FIXTURES["plain"].reply
    for body, response in zip(_EDGES, served[1:], strict=True):
        assert response.status_code == 200, (body, response.text)
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    # The engine is whole: a request after the crowd is served as before.
    after = neuron.post("/v1/chat/completions", json=_chat("plain"))
    assert after.json()["choices"][0]["message"]["content"] == FIXTURES["plain"].reply


def test_integers_past_64_bits_anywhere_in_a_body_are_never_a_5xx(neuron: Neuron) -> None:
    huge = 2**64
    chat_bodies = [
        _chat("plain", max_tokens=huge),
        _chat("plain", max_completion_tokens=huge),
        _chat("plain", min_tokens=huge),
        _chat("plain", thinking_token_budget=huge),
        _chat("plain", n=huge),
        _chat("plain", logprobs=True, top_logprobs=huge),
        _chat("plain", chat_template_kwargs={"budget": huge}),
        _chat("plain", user_id=10**400),
        _chat("tool_call", tools=[{**FIXTURES["tool_call"].tool_list()[0], "x": huge}]),  # type: ignore[index]
    ]
    for body in chat_bodies:
        response = neuron.post("/v1/chat/completions", json=body)
        assert response.status_code in (200, 400), (body, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["type"] == "invalid_request_error"
    response = neuron.post(
        "/v1/responses", json={"model": "trained", "input": "Say hello.", "max_output_tokens": huge}
    )
    assert response.status_code in (200, 400), response.text
