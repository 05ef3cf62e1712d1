"""Loading and unloading over the neuron's lifecycle API."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e


def _loads(neuron: Neuron, model: str, result: str = "ok") -> float:
    for family in text_string_to_metric_families(neuron.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "cortex_neuron_model_loads_total" and sample.labels == {
                "model": model,
                "result": result,
            }:
                return sample.value
    return 0.0


def _node_models(neuron: Neuron) -> dict[str, Any]:
    return {m["id"]: m for m in neuron.get("/node").json()["models"]}


def test_concurrent_loads_join_one_load_and_unload_frees_it(neuron: Neuron) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: neuron.post("/models/load", json={"model": "tiny-b"}), range(8))
        )
    assert [r.status_code for r in responses] == [200] * 8
    assert {r.json()["loaded_at"] for r in responses} == {responses[0].json()["loaded_at"]}
    assert _loads(neuron, "tiny-b") == 1

    node = neuron.get("/node").json()
    assert node["load_speed"] > 0  # bytes per second, timed over its loads
    record = _node_models(neuron)["tiny-b"]
    assert record["state"] == "ready"
    assert record["memory_bytes"] > 0
    used_before = node["devices"][0]["memory_used_by_models"]

    unloaded = neuron.post("/models/unload", json={"model": "tiny-b"})
    assert unloaded.status_code == 200
    assert "tiny-b" not in _node_models(neuron)
    used_after = neuron.get("/node").json()["devices"][0]["memory_used_by_models"]
    assert used_before - used_after == record["memory_bytes"]
    assert "tiny-b" not in [m["id"] for m in neuron.get("/v1/models").json()["data"]]


def test_load_streams_progress_then_the_record(neuron: Neuron) -> None:
    events = []
    with httpx.stream(
        "POST",
        f"{neuron.url}/models/load",
        json={"model": "tiny-b"},
        headers={"Accept": "text/event-stream"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    stages = [data["stage"] for name, data in events if name == "progress"]
    assert stages[-1] == "ready"
    assert "loading" in stages
    assert events[-1][0] == "record"
    assert events[-1][1]["state"] == "ready"
    neuron.post("/models/unload", json={"model": "tiny-b"}).raise_for_status()


def test_unknown_source_is_404(neuron: Neuron) -> None:
    response = neuron.post("/models/load", json={"model": "no-such-model"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "source_not_found"
    assert "no-such-model" in response.json()["error"]["message"]
    response = neuron.post("/models/load", json={"model": "x", "source": "/does/not/exist"})
    assert response.status_code == 404


def test_unload_unknown_model_is_404(neuron: Neuron) -> None:
    response = neuron.post("/models/unload", json={"model": "never-loaded"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_models_lists_loaded_and_available(neuron: Neuron) -> None:
    view = neuron.get("/models").json()
    assert {"tiny", "trained", "tiny-b"} <= {m["id"] for m in view["available"]}
    assert "tiny" in {m["id"] for m in view["loaded"]}


def test_tokenize_counts_with_the_template_without_loading(
    neuron: Neuron, tiny_tokenizer: Any
) -> None:
    messages = [{"role": "user", "content": "Count me, please."}]
    response = neuron.post("/tokenize", json={"model": "tiny-b", "messages": messages})
    assert response.status_code == 200
    text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert response.json()["count"] == len(tiny_tokenizer.encode(text, add_special_tokens=False))
    assert "tiny-b" not in _node_models(neuron)


def test_defrag_reports_bytes_freed(neuron: Neuron) -> None:
    response = neuron.post("/admin/defrag")
    assert response.status_code == 200
    assert response.json()["freed_bytes"] >= 0


def test_over_budget_load_is_507_with_figures(start_neuron: Any, model_dir: Path) -> None:
    neuron = start_neuron("--model-dir", str(model_dir), "--memory-budget", "100KiB")
    response = neuron.post("/models/load", json={"model": "tiny"})
    assert response.status_code == 507
    error = response.json()["error"]
    assert error["needed_bytes"] > error["free_bytes"]
    assert error["free_bytes"] <= 100 * 1024
    assert str(error["needed_bytes"]) in error["message"]
    assert neuron.get("/node").json()["models"] == []


def test_admin_token_guards_lifecycle_routes(start_neuron: Any, model_dir: Path) -> None:
    neuron = start_neuron("--model-dir", str(model_dir), env={"NEURON_ADMIN_TOKEN": "s3cret"})
    for path, body in [("/models/load", {"model": "tiny"}), ("/models/unload", {"model": "tiny"})]:
        refused = neuron.post(path, json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = neuron.post(path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert neuron.post("/admin/defrag").status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert neuron.post("/models/load", json={"model": "tiny"}, headers=auth).status_code == 200
    assert neuron.get("/node").status_code == 200  # status stays open
    assert neuron.post("/models/unload", json={"model": "tiny"}, headers=auth).status_code == 200


def test_different_models_loading_at_once_all_come_up_intact(
    start_neuron: Any, model_dir: Path
) -> None:
    from cortex.testing import FIXTURES

    neuron = start_neuron("--model-dir", str(model_dir))
    with ThreadPoolExecutor(3) as pool:
        responses = list(
            pool.map(
                lambda m: neuron.post("/models/load", json={"model": m}),
                ["tiny", "trained", "tiny-b"],
            )
        )
    assert [r.json()["state"] for r in responses] == ["ready"] * 3
    fixture = FIXTURES["plain"]
    reply = neuron.post(
        "/v1/chat/completions", json={"model": "trained", "messages": fixture.message_list()}
    ).json()
    assert reply["choices"][0]["message"]["content"] == fixture.reply
