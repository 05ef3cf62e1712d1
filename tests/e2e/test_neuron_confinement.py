"""The neuron reads only what it was given: model dirs, allowed paths, the local HF cache.

Real processes. A folder outside those, however it is named (an absolute path, ``..``, a
link in a model dir that points out, ``/proc/self/root/…``), is a 404 on load, on tokenize
and in a preload, and the answer does not say where it is. With ``protect = "all"`` every
route but ``/health`` asks for the admin token, and a gateway that has it serves through.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello."}]
TOKEN = "n3uron-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFUSED = "is not a model under the neuron's model folders"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """root/models/tiny; root/outside/tiny; root/models/escape → root/outside/tiny."""
    root = tmp_path_factory.mktemp("confinement")
    shutil.copytree(tiny_model, root / "models" / "tiny")
    shutil.copytree(tiny_model, root / "outside" / "tiny")
    (root / "models" / "escape").symlink_to(root / "outside" / "tiny", target_is_directory=True)
    return root


def _outside_spellings(root: Path) -> dict[str, str]:
    outside = root / "outside" / "tiny"
    return {
        "absolute": str(outside),
        "dotdot": "../outside/tiny",  # joined to the model dir, it leads out
        "dotdot-absolute": str(root / "models" / ".." / "outside" / "tiny"),
        "link-name": "escape",
        "link-path": str(root / "models" / "escape"),
        "proc-root": f"/proc/self/root{outside}",
    }


@pytest.fixture(scope="module")
def confined(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Neuron]:
    log = tmp_path_factory.mktemp("confined-log") / "neuron.log"
    neuron = Neuron(["--model-dir", str(layout / "models"), "--name", "confined"], log)
    try:
        neuron.wait_ready()
        yield neuron
    finally:
        neuron.stop()


def _assert_refused(response: httpx.Response, layout: Path, source: str) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "source_not_found"
    assert REFUSED in error["message"]
    # What the client sent is said back; where it led is not.
    assert str(layout / "outside") not in error["message"].replace(repr(source), "")


@pytest.mark.parametrize("spelling", list(_outside_spellings(Path("/x"))))
def test_a_folder_outside_is_404_on_load_and_tokenize(
    confined: Neuron, layout: Path, spelling: str
) -> None:
    source = _outside_spellings(layout)[spelling]
    _assert_refused(
        confined.post("/models/load", json={"model": "x", "source": source}), layout, source
    )
    _assert_refused(confined.post("/models/load", json={"model": source}), layout, source)
    tokenize = {"model": "x", "source": source, "messages": MESSAGES}
    _assert_refused(confined.post("/tokenize", json=tokenize), layout, source)
    assert confined.get("/node").json()["models"] == []


def test_the_folders_under_the_model_dir_still_load(confined: Neuron, layout: Path) -> None:
    folder = str(layout / "models" / "tiny")
    counted = confined.post(
        "/tokenize", json={"model": "t", "source": folder, "messages": MESSAGES}
    )
    assert counted.status_code == 200, counted.text
    loaded = confined.post("/models/load", json={"model": "tiny"})
    assert loaded.status_code == 200, loaded.text
    assert confined.post("/models/unload", json={"model": "tiny"}).status_code == 200


def test_models_lists_only_folders_inside(confined: Neuron) -> None:
    available = {m["id"] for m in confined.get("/models").json()["available"]}
    assert "tiny" in available
    assert "escape" not in available


def test_refused_preloads_are_logged_and_the_neuron_serves(start_neuron: Any, layout: Path) -> None:
    spellings = _outside_spellings(layout)
    preloads = [arg for name, src in spellings.items() for arg in ("--preload", f"{name}={src}")]
    neuron = start_neuron("--model-dir", str(layout / "models"), *preloads, "--preload", "tiny")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        models = {m["id"]: m["state"] for m in neuron.get("/node").json()["models"]}
        if models.get("tiny") == "ready":
            break
        time.sleep(0.2)
    assert models == {"tiny": "ready"}
    log = neuron.log()
    for name in spellings:
        assert f"preloading {name}=" in log
    assert log.count(REFUSED) >= len(spellings)
    assert "Traceback" not in log


def test_allowed_paths_let_an_outside_folder_load(start_neuron: Any, layout: Path) -> None:
    neuron = start_neuron(
        "--model-dir", str(layout / "models"), "--allowed-path", str(layout / "outside")
    )
    for body in (
        {"model": "out", "source": str(layout / "outside" / "tiny")},
        {"model": "escape"},  # the link now leads somewhere allowed
    ):
        response = neuron.post("/models/load", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "ready"
    available = {m["id"] for m in neuron.get("/models").json()["available"]}
    assert {"tiny", "escape"} <= available


# --- protect = "all" ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Neuron]:
    log = tmp_path_factory.mktemp("guarded-log") / "neuron.log"
    args = ["--model-dir", str(layout / "models"), "--name", "a", "--protect", "all"]
    neuron = Neuron(args, log, env={"NEURON_ADMIN_TOKEN": TOKEN})
    try:
        neuron.wait_ready()  # /health answers without the token
        yield neuron
    finally:
        neuron.stop()


def _calls(neuron: Neuron, headers: dict[str, str]) -> dict[str, httpx.Response]:
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    response = {"model": "tiny", "input": "hi", "max_output_tokens": 2}
    tokenize = {"model": "tiny", "messages": MESSAGES}
    return {
        "chat": neuron.post("/v1/chat/completions", json=chat, headers=headers),
        "responses": neuron.post("/v1/responses", json=response, headers=headers),
        "tokenize": neuron.post("/tokenize", json=tokenize, headers=headers),
        "node": neuron.get("/node", headers=headers),
        "models": neuron.get("/models", headers=headers),
        "openai-models": neuron.get("/v1/models", headers=headers),
        "metrics": neuron.get("/metrics", headers=headers),
        "load": neuron.post("/models/load", json={"model": "tiny"}, headers=headers),
        "defrag": neuron.post("/admin/defrag", headers=headers),
    }


def test_protect_all_asks_every_route_but_health_for_the_token(guarded: Neuron) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for route, response in _calls(guarded, headers).items():
            assert response.status_code == 401, (route, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert error["type"] == "authentication_error"
            assert TOKEN not in response.text
    assert guarded.get("/health").status_code == 200
    assert guarded.post("/models/load", json={"model": "tiny"}, headers=AUTH).status_code == 200
    for route, response in _calls(guarded, AUTH).items():
        assert response.status_code == 200, (route, response.text)


def test_a_gateway_with_the_token_serves_through_a_protected_neuron(
    guarded: Neuron, start_gateway: Any, layout: Path
) -> None:
    outside = str(layout / "outside" / "tiny")
    models = (
        '[[models]]\nid = "tiny-b"\nsource = "tiny"\nneurons = ["a"]\n'
        f'[[models]]\nid = "escapee"\nsource = "{outside}"\nneurons = ["a"]\n'
    )
    neuron = f'[[neurons]]\nname = "a"\nendpoint = "{guarded.url}"\ntoken = "{TOKEN}"\n'
    gateway = start_gateway({}, models, extra=neuron)
    deadline = time.monotonic() + 30
    while not gateway.fleet()["nodes"][0]["up"] and time.monotonic() < deadline:
        time.sleep(0.2)  # polls (/node, /models) carry the token
    assert gateway.fleet()["nodes"][0]["up"], gateway.fleet()["nodes"][0]["error"]

    # The client's own credentials are not the neuron's: they are never relayed.
    client_auth = {"Authorization": "Bearer client-key", "x-api-key": "client-key"}
    chat = {"model": "tiny-b", "messages": MESSAGES, "max_tokens": 2}
    response = gateway.post("/v1/chat/completions", json=chat, headers=client_auth)
    assert response.status_code == 200, response.text  # a load, then a relayed request
    stream = gateway.post("/v1/chat/completions", json={**chat, "stream": True})
    assert stream.status_code == 200
    assert "data: [DONE]" in stream.text
    count = gateway.post(
        "/v1/messages/count_tokens",
        json={"model": "escapee", "messages": MESSAGES},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert count.status_code == 404, count.text  # tokenize reached the neuron, which refused
    assert REFUSED in count.text
    counted = gateway.post(
        "/v1/messages/count_tokens",
        json={"model": "tiny-b", "messages": MESSAGES},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert counted.status_code == 200, counted.text

    # A profile's source is the neuron's to check: one outside its folders is not loaded.
    refused = gateway.post("/v1/chat/completions", json={**chat, "model": "escapee"})
    assert refused.status_code >= 400
    assert REFUSED in refused.json()["error"]["message"]
    assert outside not in refused.json()["error"]["message"].replace(repr(outside), "")
    loaded = {m["id"] for m in guarded.get("/node", headers=AUTH).json()["models"]}
    assert "escapee" not in loaded
    assert "tiny-b" in loaded
