"""One bad request harms no one: hostile names, broken weights, other spellings of a folder and
client chat templates each get a clear answer, and the neuron goes on serving."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "hi"}]
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
CLIENT_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"


def _node_models(neuron: Neuron) -> dict[str, Any]:
    return {m["id"]: m for m in neuron.get("/node").json()["models"]}


def _stream_load(neuron: Neuron, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    events: list[tuple[str | None, Any]] = []
    with httpx.stream(
        "POST",
        f"{neuron.url}/models/load",
        json=body,
        headers={"Accept": "text/event-stream"},
        timeout=60,
    ) as response:
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


# --- names and sources -----------------------------------------------------------------


@pytest.mark.parametrize("route", ["/models/load", "/tokenize"])
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "m" * 256}, "model"),
        ({"model": "m\x00x"}, "model"),
        ({"model": "m\nx"}, "model"),
        ({"model": "m", "source": "s" * 256}, "source"),
        ({"model": "m", "source": "/tmp/" + "s" * 300}, "source"),
        ({"model": "m", "source": "/tmp/s\x00x"}, "source"),
        ({"model": "m", "source": "/" + "s/" * 3000}, "source"),
        ({"model": "m", "source": "~no-such-user-of-cortex/model"}, "source"),
    ],
)
def test_hostile_names_and_sources_are_400_naming_the_field(
    neuron: Neuron, route: str, fields: dict[str, Any], param: str
) -> None:
    body = {**fields, "messages": MESSAGES} if route == "/tokenize" else fields
    response = neuron.post(route, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}:")
    assert "Internal error" not in error["message"]
    assert neuron.get("/health").status_code == 200
    assert "m" not in _node_models(neuron)


def test_hostile_name_on_unload_is_400(neuron: Neuron) -> None:
    response = neuron.post("/models/unload", json={"model": "m" * 256})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


# --- corrupt weights -------------------------------------------------------------------


def test_corrupt_weights_fail_the_record_which_unloads_and_reloads(
    start_neuron: Any, tiny_model: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    for name in ("garbage", "truncated"):
        shutil.copytree(tiny_model, models / name)
    weights = (tiny_model / "model.safetensors").read_bytes()
    (models / "garbage" / "model.safetensors").write_bytes(b"\xff not safetensors " * 64)
    (models / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    neuron = start_neuron("--model-dir", str(models))

    for name in ("garbage", "truncated"):
        response = neuron.post("/models/load", json={"model": name})
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "model_load_failed"
        record = _node_models(neuron)[name]
        assert record["state"] == "failed"
        assert record["error"]
        assert record["error"] in error["message"]
    assert "safetensors" in _node_models(neuron)["garbage"]["error"]

    # A streamed load of the broken folder ends in an error event that gives the reason.
    events = _stream_load(neuron, {"model": "garbage"})
    assert events[-1][0] == "error"
    assert events[-1][1]["status"] == 503
    assert "safetensors" in events[-1][1]["error"]["message"]

    # A failed record unloads at once.
    unloaded = neuron.post("/models/unload", json={"model": "garbage"})
    assert unloaded.status_code == 200
    assert unloaded.json()["state"] == "failed"
    assert "garbage" not in _node_models(neuron)

    # Mended, the folder loads; the new load replaces the failed record.
    (models / "truncated" / "model.safetensors").write_bytes(weights)
    response = neuron.post("/models/load", json={"model": "truncated"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "ready"
    assert _node_models(neuron)["truncated"]["error"] is None
    chat = neuron.post(
        "/v1/chat/completions", json={"model": "truncated", "messages": MESSAGES, "max_tokens": 2}
    )
    assert chat.status_code == 200
    assert neuron.post("/models/unload", json={"model": "truncated"}).status_code == 200


# --- one folder, other spellings --------------------------------------------------------


def test_the_loaded_folder_spelled_otherwise_is_already_loaded(
    neuron: Neuron, model_dir: Path, tmp_path: Path
) -> None:
    same = neuron.post("/models/load", json={"model": "tiny"})
    assert same.status_code == 200
    loaded_at = same.json()["loaded_at"]
    link = tmp_path / "link-to-tiny"
    link.symlink_to(model_dir / "tiny", target_is_directory=True)
    folder = str(model_dir / "tiny")
    for body in [
        {"model": "tiny", "source": "tiny"},
        {"model": "tiny", "source": folder},
        {"model": "tiny", "source": folder + "/"},
        {"model": "tiny", "source": str(model_dir / "tiny-b" / ".." / "tiny")},
        {"model": "tiny", "source": str(link)},
        {"model": folder},
        {"model": folder + "/"},
    ]:
        response = neuron.post("/models/load", json=body)
        assert response.status_code == 200, (body, response.text)
        assert response.json()["state"] == "ready"
        assert response.json()["loaded_at"] == loaded_at

    other = neuron.post("/models/load", json={"model": "tiny", "source": str(model_dir / "tiny-b")})
    assert other.status_code == 409
    assert "already loaded from" in other.json()["error"]["message"]
    assert _node_models(neuron)["tiny"]["loaded_at"] == loaded_at


# --- client chat templates ---------------------------------------------------------------


def _chat(neuron: Neuron, template: str | None = None, timeout: float = 60) -> httpx.Response:
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    if template is not None:
        body["chat_template_kwargs"] = {"chat_template": template}
    return httpx.post(f"{neuron.url}/v1/chat/completions", json=body, timeout=timeout)


def test_client_templates_are_refused_by_default(neuron: Neuron) -> None:
    for response in (
        _chat(neuron, CLIENT_TEMPLATE),
        neuron.post(
            "/tokenize",
            json={
                "model": "tiny",
                "messages": MESSAGES,
                "chat_template_kwargs": {"chat_template": CLIENT_TEMPLATE},
            },
        ),
    ):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "chat_template_kwargs.chat_template"
        assert "allow_client_chat_template" in error["message"]


@pytest.fixture(scope="module")
def permissive(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Any:
    log_dir = tmp_path_factory.mktemp("permissive-log")
    process = Neuron(
        ["--model-dir", str(model_dir), "--preload", "tiny", "--allow-client-chat-template"],
        log_dir / "neuron.log",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_an_allowed_client_template_renders(permissive: Neuron, tiny_tokenizer: Any) -> None:
    response = _chat(permissive, CLIENT_TEMPLATE)
    assert response.status_code == 200, response.text
    expected = tiny_tokenizer.encode("[user] hi\n[assistant]", add_special_tokens=False)
    assert response.json()["usage"]["prompt_tokens"] == len(expected)
    counted = permissive.post(
        "/tokenize",
        json={
            "model": "tiny",
            "messages": MESSAGES,
            "chat_template_kwargs": {"chat_template": CLIENT_TEMPLATE},
        },
    )
    assert counted.json() == {"count": len(expected)}
    broken = _chat(permissive, "{{ raise_exception('no, thanks') }}")
    assert broken.status_code == 400
    assert "no, thanks" in broken.json()["error"]["message"]


@pytest.mark.parametrize(
    "template",
    [
        NESTED_LOOPS,
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s }}",
        "{{ ['" + "x" * 1000 + "'] * 100000 * 100000 }}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
    ids=["nested-loops", "empty-loops", "doubling", "repeating", "recursion"],
)
def test_a_pathological_template_is_a_quick_400_and_the_next_chat_is_quick(
    permissive: Neuron, template: str
) -> None:
    started = time.monotonic()
    response = _chat(permissive, template)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "chat_template_kwargs.chat_template"
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert _chat(permissive).status_code == 200
    assert time.monotonic() - started < 5


def test_seven_pathological_templates_hold_up_no_one_for_long(permissive: Neuron) -> None:
    with ThreadPoolExecutor(7) as pool:
        hostile = [pool.submit(_chat, permissive, NESTED_LOOPS) for _ in range(7)]
        time.sleep(0.3)  # they are rendering now
        started = time.monotonic()
        assert _chat(permissive).status_code == 200
        assert time.monotonic() - started < 15
        assert [f.result().status_code for f in hostile] == [400] * 7


def test_clients_that_leave_hold_up_no_one(permissive: Neuron) -> None:
    for _ in range(6):
        with pytest.raises(httpx.TimeoutException):
            _chat(permissive, NESTED_LOOPS, timeout=0.3)
    started = time.monotonic()
    assert _chat(permissive).status_code == 200
    assert time.monotonic() - started < 5
