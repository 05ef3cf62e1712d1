"""The gateway in front of real neurons, talked to with the official ``openai`` SDK."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from cortex.testing import FIXTURES
from tests.e2e.procs import Gateway

pytestmark = pytest.mark.e2e

# The tiny model takes 558,656 bytes in float32, and these neurons give each model a KV cache
# of 128 KiB (256 tokens): 689,728 bytes a model. A 1.45 MB budget holds two, not three;
# 2.2 MB holds three, not four.
KV = ("--kv-cache-bytes", "128KiB")
TWO_MODELS = "1450000"
THREE_MODELS = "2200000"
HELLO = [{"role": "user", "content": "Say hello."}]


def _client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def _ask(gateway: Gateway, model: str, **kwargs: Any) -> Any:
    return _client(gateway).chat.completions.create(
        model=model, messages=HELLO, max_tokens=kwargs.pop("max_tokens", 4), **kwargs
    )


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _profiles(*entries: str) -> str:
    return "\n".join(entries) + "\n"


def _profile(model: str, *, neurons: str = '["a"]', **fields: Any) -> str:
    lines = ["[[models]]", f'id = "{model}"', f"neurons = {neurons}"]
    for key, value in fields.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines)


def test_catalogue_cold_load_single_flight_and_streaming(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron(
        "--model-dir", str(fleet_dir), "--memory-budget", TWO_MODELS, "--name", "a", *KV
    )
    b = start_neuron(
        "--model-dir", str(fleet_dir), "--memory-budget", TWO_MODELS, "--name", "b", *KV
    )
    models = _profiles(
        _profile("m1", neurons='["a", "b"]'),
        _profile("m2", neurons='["b", "a"]'),
        _profile("m3", neurons='["a", "b"]'),
        '[aliases]\n"gpt-4o-mini" = "m1"',
    )
    gateway = start_gateway({"a": a, "b": b}, models)

    listed = {m.id: m for m in _client(gateway).models.list()}
    assert {"m1", "m2", "m3", "m4", "m5", "trained"} <= set(listed)  # profiles and models on disk
    assert listed["m1"].model_extra is not None
    assert listed["m1"].model_extra["state"] == "available"

    # The first request to a cold model loads it and is answered.
    reply = _ask(gateway, "m1")
    assert reply.choices[0].message.content is not None
    assert gateway.loaded("a") == {"m1"}
    listed = {m.id: m for m in _client(gateway).models.list()}
    assert listed["m1"].model_extra is not None
    assert listed["m1"].model_extra["state"] == "ready"
    assert listed["m1"].model_extra["nodes"] == ["a"]

    # An alias reaches its model.
    assert _ask(gateway, "gpt-4o-mini").model == "m1"

    # Sixteen concurrent requests for a cold model: one load.
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: _ask(gateway, "m2"), range(16)))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    assert _metric(gateway.metrics(), "cortex_model_loads_total", model="m2") == 1
    assert _metric(b.get("/metrics").text, "cortex_neuron_model_loads_total", model="m2") == 1
    assert gateway.loaded("b") == {"m2"}

    # Streaming through the gateway gives the same text as straight from the neuron.
    request = {"messages": HELLO, "max_tokens": 12, "temperature": 0, "stream": True}
    through = "".join(
        c.choices[0].delta.content or ""
        for c in _client(gateway).chat.completions.create(model="m2", **request)  # type: ignore[call-overload]
        if c.choices
    )
    direct_client = OpenAI(base_url=f"{b.url}/v1", api_key="unused", max_retries=0)
    direct = "".join(
        c.choices[0].delta.content or ""
        for c in direct_client.chat.completions.create(model="m2", **request)  # type: ignore[call-overload]
        if c.choices
    )
    assert through == direct
    assert through

    # Usage: only when asked, and the gateway counted the tokens either way.
    plain = list(_client(gateway).chat.completions.create(model="m2", **request))  # type: ignore[call-overload]
    assert all(chunk.usage is None for chunk in plain)
    asked = list(
        _client(gateway).chat.completions.create(
            model="m2", stream_options={"include_usage": True}, **request
        )  # type: ignore[call-overload]
    )
    assert asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == 12
    text = gateway.metrics()
    assert _metric(text, "cortex_generation_tokens_total", model="m2") >= 3 * 12
    assert _metric(text, "cortex_time_to_first_token_seconds_count", model="m2") >= 3
    assert _metric(text, "cortex_cold_start_wait_seconds_count", model="m2") >= 1
    assert _metric(text, "cortex_node_up", node="a") == 1


def test_lru_evicts_the_least_recently_used_and_never_the_pinned(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron(
        "--model-dir", str(fleet_dir), "--memory-budget", THREE_MODELS, "--name", "a", *KV
    )
    models = _profiles(_profile("m1", pinned=True), _profile("m2"), _profile("m3"), _profile("m4"))
    gateway = start_gateway({"a": a}, models)
    _wait(lambda: gateway.loaded("a") == {"m1"})  # pinned: loaded at start
    _ask(gateway, "m2")
    _ask(gateway, "m3")
    _ask(gateway, "m2")  # m3 is now the least recently used unpinned model
    assert gateway.loaded("a") == {"m1", "m2", "m3"}
    _ask(gateway, "m4")
    assert gateway.loaded("a") == {"m1", "m2", "m4"}
    text = gateway.metrics()
    assert _metric(text, "cortex_evictions_total", model="m3", reason="lru") == 1
    assert _metric(text, "cortex_evictions_total", model="m1") == 0


def test_priority_evicts_the_lowest_priority_even_if_recent(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron(
        "--model-dir", str(fleet_dir), "--memory-budget", TWO_MODELS, "--name", "a", *KV
    )
    models = _profiles(
        _profile("m1", priority=1), _profile("m2", priority=10), _profile("m3", priority=5)
    )
    gateway = start_gateway({"a": a}, models, strategy="priority")
    _ask(gateway, "m2")
    _ask(gateway, "m1")  # the most recent, but the lowest priority
    _ask(gateway, "m3")
    assert gateway.loaded("a") == {"m2", "m3"}
    assert _metric(gateway.metrics(), "cortex_evictions_total", model="m1", reason="priority") == 1


def test_a_killed_neuron_is_marked_down_and_the_other_serves(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a")
    b = start_neuron("--model-dir", str(fleet_dir), "--name", "b")
    gateway = start_gateway({"a": a, "b": b}, _profiles(_profile("m1", neurons='["a", "b"]')))
    first = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m1", "messages": HELLO, "max_tokens": 3},
        timeout=60,
    )
    assert first.headers["x-cortex-node"] == "a"
    a.kill()
    second = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m1", "messages": HELLO, "max_tokens": 3},
        timeout=60,
    )
    assert second.status_code == 200
    assert second.headers["x-cortex-node"] == "b"
    nodes = {n["name"]: n for n in gateway.fleet()["nodes"]}
    assert nodes["a"]["up"] is False
    assert nodes["b"]["up"] is True
    assert _metric(gateway.metrics(), "cortex_node_up", node="a") == 0


def test_errors_name_the_problem(start_neuron: Any, start_gateway: Any, fleet_dir: Path) -> None:
    a = start_neuron("--model-dir", str(fleet_dir), "--memory-budget", "300000", "--name", "a", *KV)
    models = _profiles(_profile("m1"), _profile("ghost", source='"/nowhere/at/all"'))
    gateway = start_gateway({"a": a}, models)
    unknown = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "nope", "messages": HELLO}, timeout=30
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    too_big = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "m1", "messages": HELLO}, timeout=30
    )
    assert too_big.status_code == 503
    assert "needs" in too_big.json()["error"]["message"]
    failed = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "ghost", "messages": HELLO}, timeout=30
    )
    assert failed.status_code == 503
    assert "/nowhere/at/all" in failed.json()["error"]["message"]
    bad = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{nope", timeout=30)
    assert bad.status_code == 400
    assert httpx.head(f"{gateway.url}/", timeout=10).status_code == 200


def test_cortex_status_and_load_against_a_running_fleet(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a")
    gateway = start_gateway({"a": a}, _profiles(_profile("trained", pinned=True), _profile("m1")))
    _wait(lambda: gateway.loaded("a") == {"trained"})
    fixture = FIXTURES["plain"]
    reply = _client(gateway).chat.completions.create(
        model="trained", messages=fixture.message_list()
    )  # type: ignore[arg-type]
    assert reply.choices[0].message.content == fixture.reply

    def cortex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cortex", *args, "--gateway", gateway.url],
            capture_output=True, text=True, timeout=120, check=False,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip

    loaded = cortex("load", "m1")
    assert loaded.returncode == 0, loaded.stderr
    assert "a" in loaded.stdout
    status = cortex("status")
    assert status.returncode == 0, status.stderr
    for text in ("a", "up", "trained", "m1", "ready"):
        assert text in status.stdout
    unloaded = cortex("unload", "m1")
    assert unloaded.returncode == 0, unloaded.stderr
    assert gateway.loaded("a") == {"trained"}


def _wait(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_responses_and_tool_call_streams_relay_through_the_gateway(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron("--model-dir", str(fleet_dir), "--name", "a")
    gateway = start_gateway({"a": a}, _profiles(_profile("trained")))
    client = _client(gateway)
    answer = client.responses.create(model="trained", input="Say hello.")
    assert answer.output_text == FIXTURES["plain"].reply
    events = list(client.responses.create(model="trained", input="Say hello.", stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == FIXTURES["plain"].reply

    fixture = FIXTURES["tool_call"]
    chunks = list(
        client.chat.completions.create(
            model="trained",
            messages=fixture.message_list(),
            tools=fixture.tool_list(),
            stream=True,  # type: ignore[arg-type]
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    text = gateway.metrics()
    assert _metric(text, "cortex_requests_total", model="trained", dialect="responses") == 2
    assert _metric(text, "cortex_requests_total", model="trained", dialect="chat") == 1
    assert _metric(text, "cortex_generation_tokens_total", model="trained") > 0
