"""The batching engine through a real neuron: limits, metrics, n, logprobs, disconnects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Tell me about the river."}]


def _metrics(neuron: Neuron) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(neuron.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move(neuron: Neuron) -> None:
    before = _metrics(neuron)
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=8,
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    after = _metrics(neuron)
    assert (
        _value(after, "cortex_neuron_generation_tokens_total", model="tiny")
        - _value(before, "cortex_neuron_generation_tokens_total", model="tiny")
        == 8
    )
    assert _value(after, "cortex_neuron_prompt_tokens_total", model="tiny") > _value(
        before, "cortex_neuron_prompt_tokens_total", model="tiny"
    )
    for histogram in (
        "cortex_neuron_time_to_first_token_seconds",
        "cortex_neuron_inter_token_latency_seconds",
        "cortex_neuron_queue_time_seconds",
        "cortex_neuron_e2e_request_latency_seconds",
    ):
        assert _value(after, f"{histogram}_count", model="tiny") > _value(
            before, f"{histogram}_count", model="tiny"
        )
    assert _value(after, "cortex_neuron_requests_total", model="tiny", finish_reason="length") >= 1
    assert ("cortex_neuron_requests_running", (("model", "tiny"),)) in after
    assert ("cortex_neuron_kv_cache_tokens", (("model", "tiny"),)) in after


def test_n_choices_and_logprobs(neuron: Neuron) -> None:
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=6, n=3, temperature=1.0, seed=5,  # type: ignore[arg-type]
        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # each choice samples its own
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 18
    for choice in reply.choices:
        assert choice.logprobs is not None
        entries = choice.logprobs.content or []
        assert len(entries) == 6
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=4, n=2, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    finishes = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finishes == {0, 1}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_bad_sampling_values_are_400s_naming_the_field(neuron: Neuron) -> None:
    base = {"model": "tiny", "messages": PROMPT}
    for field, value in [
        ("top_k", -5), ("min_p", 1.5), ("presence_penalty", 3), ("frequency_penalty", -3),
        ("repetition_penalty", 0), ("n", 0), ("top_logprobs", 50), ("min_tokens", -1),
        ("seed", "x"), ("stop_token_ids", "eos"), ("logprobs", "yes"),
        # Past what a tensor holds, or what the model has: refused here, never in a batch.
        ("top_k", 2**63), ("top_k", 2**31), ("seed", 2**64), ("seed", 2**63),
        ("seed", -(2**63) - 1), ("stop_token_ids", [10**6]), ("stop_token_ids", [-1]),
        ("temperature", 2.5), ("temperature", -1e-320), ("top_p", 0),
        ("repetition_penalty", 11), ("max_tokens", 0),
    ]:  # fmt: skip
        response = neuron.post("/v1/chat/completions", json={**base, field: value})
        assert response.status_code == 400, (field, value)
        assert field in response.json()["error"]["message"], (field, value)
        assert response.json()["error"]["type"] == "invalid_request_error"
    for field, value in [("top_k", 2**63), ("seed", 2**64), ("temperature", 3)]:
        body = {"model": "tiny", "input": "Tell me about the river.", field: value}
        response = neuron.post("/v1/responses", json=body)
        assert response.status_code == 400, (field, value)
        assert field in response.json()["error"]["message"], (field, value)
    # stop_token_ids are checked against the model's vocabulary, with min_tokens too.
    outside = {**base, "stop_token_ids": [10**6], "min_tokens": 2}
    response = neuron.post("/v1/chat/completions", json=outside)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stop_token_ids"
    orphan = neuron.post("/v1/chat/completions", json={**base, "top_logprobs": 2})
    assert orphan.status_code == 400
    assert "logprobs" in orphan.json()["error"]["message"]


def test_a_full_queue_is_a_429_with_retry_after(start_neuron: Any, tiny_model: Path) -> None:
    neuron = start_neuron(
        "--preload", f"tiny={tiny_model}", "--allowed-path", str(tiny_model),
        "--max-num-seqs", "1", "--max-queue", "1",
    )  # fmt: skip
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 60000, "ignore_eos": True,
            "stream": True}  # fmt: skip

    async def until(client: httpx.AsyncClient, name: str, value: float) -> None:
        """Wait for the neuron's own gauge, not for a guessed time (slow CI machines)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = (await client.get("/metrics")).text
            families = text_string_to_metric_families(text)
            samples = {s.name: s.value for f in families for s in f.samples if s.labels}
            if samples.get(name) == value:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} never reached {value}")

    async def crowd() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=30) as client:
            holders = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(2)]
            running = await holders[0].__aenter__()
            await until(client, "cortex_neuron_requests_running", 1)
            waiting = await holders[1].__aenter__()
            await until(client, "cortex_neuron_requests_waiting", 1)
            refused = await client.post("/v1/chat/completions", json=body)
            for holder in holders:
                await holder.__aexit__(None, None, None)
            return [running, waiting, refused]

    *opened, refused = asyncio.run(crowd())
    assert [r.status_code for r in opened] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_hundreds_of_disconnects_leak_nothing(neuron: Neuron) -> None:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 60000, "ignore_eos": True,
            "stream": True, "temperature": 1.0}  # fmt: skip

    async def leave_after_first_chunk(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                break

    async def storm() -> None:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=neuron.url, timeout=60, limits=limits) as client:
            for _ in range(5):
                await asyncio.gather(*(leave_after_first_chunk(client) for _ in range(50)))

    asyncio.run(storm())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        record = next(m for m in neuron.get("/node").json()["models"] if m["id"] == "tiny")
        cached = _value(_metrics(neuron), "cortex_neuron_kv_cache_tokens", model="tiny")
        if (record["in_flight"], record["queued"], cached) == (0, 0, 0):
            break
        time.sleep(0.1)
    assert (record["in_flight"], record["queued"], cached) == (0, 0, 0)
    cancelled = _value(_metrics(neuron), "cortex_neuron_requests_total", model="tiny",
                       finish_reason="cancelled")  # fmt: skip
    assert cancelled >= 250


def test_the_prefix_cache_serves_a_conversation_across_dialects_and_n(neuron: Neuron) -> None:
    """A long system prompt asked once in chat completions is found again by the same
    conversation in the Responses API, and by the second choice of an n=2 request; the
    counters, /node and the replies say so."""
    system = " ".join(f"Rule {i}: answer briefly about rivers and stone." for i in range(40))
    question = "Tell me about the river."
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    hits = "cortex_neuron_prefix_cache_hit_tokens_total"

    before = _value(_metrics(neuron), hits, model="tiny")
    first = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
    )
    prompt_tokens = first.usage.prompt_tokens if first.usage else 0
    assert prompt_tokens > 300
    after_chat = _value(_metrics(neuron), hits, model="tiny")

    reply = client.responses.create(
        model="tiny", instructions=system, input=question, max_output_tokens=4, temperature=0
    )
    assert reply.usage is not None
    assert reply.usage.input_tokens == prompt_tokens  # the same conversation, the same prompt
    after_responses = _value(_metrics(neuron), hits, model="tiny")
    # Every full block of the prompt but the one that holds its last token is reused.
    assert after_responses - after_chat >= prompt_tokens - 2 * 16

    several = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        n=2,
    )
    assert len(several.choices) == 2
    after_n = _value(_metrics(neuron), hits, model="tiny")
    assert after_n - after_responses >= 2 * (prompt_tokens - 3 * 16)
    assert after_chat - before < 16  # the first asking found no full block of it cached

    record = next(m for m in neuron.get("/node").json()["models"] if m["id"] == "tiny")
    assert record["kv_blocks_total"] > 0
    assert record["kv_blocks_used"] == 0  # nothing runs: finished blocks are cached, not used
    assert record["prefix_cache_hit_ratio"] > 0
    assert record["kv_cache_bytes"] > 0


def test_a_small_kv_cache_caps_the_context_and_longer_prompts_are_400s(
    start_neuron: Any, tiny_model: Path
) -> None:
    """128 KiB of KV holds 256 tokens of the tiny model: the record says so, and a prompt
    past it is refused like one past the model's own context."""
    neuron = start_neuron(
        "--preload",
        f"tiny={tiny_model}",
        "--allowed-path",
        str(tiny_model),
        "--kv-cache-bytes",
        "128KiB",
    )
    neuron.wait_loaded("tiny")
    record = next(m for m in neuron.get("/node").json()["models"] if m["id"] == "tiny")
    assert record["context_length"] == 256
    assert record["kv_cache_bytes"] == 128 * 1024
    long = [{"role": "user", "content": "river stone " * 200}]
    response = neuron.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": long, "max_tokens": 4}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "256" in error["message"]
    short = neuron.post("/v1/chat/completions", json={"model": "tiny", "messages": PROMPT})
    assert short.status_code == 200
    assert short.json()["usage"]["total_tokens"] <= 256
