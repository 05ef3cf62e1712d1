"""Bad input is a 4xx in the OpenAI envelope, never a 500 or a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai import NotFoundError, OpenAI

from tests.e2e.procs import Neuron

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "hi"}]


def _post(
    neuron: Neuron, body: bytes | dict[str, Any], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    if isinstance(body, bytes):
        response = neuron.post("/v1/chat/completions", content=body, **kwargs)
    else:
        response = neuron.post("/v1/chat/completions", json=body, **kwargs)
    assert "Traceback" not in response.text
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "tiny", "messages": [', None),
        (b"[]", None),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": -5}, "max_tokens"),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "tiny", "messages": "hello"}, "messages"),
        ({"model": 7, "messages": MESSAGES}, "model"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "tiny", "messages": [{"content": "x"}]}, "messages.0.role"),
        ({"model": "tiny", "messages": MESSAGES, "top_p": 0}, "top_p"),
        ({"model": "tiny", "messages": MESSAGES, "stop": 5}, "stop"),
    ],
)
def test_bad_requests_are_400_in_the_envelope(neuron: Neuron, body: Any, param: str | None) -> None:
    status, payload = _post(neuron, body)
    assert status == 400
    error = payload["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_image_content_is_a_clear_400(neuron: Neuron) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    status, payload = _post(
        neuron, {"model": "tiny", "messages": [{"role": "user", "content": [image]}]}
    )
    assert status == 400
    assert "text only" in payload["error"]["message"]


def test_unknown_model_is_404_model_not_found(neuron: Neuron) -> None:
    client = OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(NotFoundError) as info:
        client.chat.completions.create(model="ghost", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_prompt_longer_than_context_is_400_context_length_exceeded(
    start_neuron: Any, tmp_path: Path, tiny_model: Path
) -> None:
    # A copy of the tiny model whose config says its context is 64 tokens.
    import json
    import shutil

    short = tmp_path / "short"
    shutil.copytree(tiny_model, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (short / "config.json").write_text(json.dumps(config))
    neuron = start_neuron("--preload", f"short={short}", "--allowed-path", str(short))
    status, payload = _post(
        neuron, {"model": "short", "messages": [{"role": "user", "content": "word " * 200}]}
    )
    assert status == 400
    assert payload["error"]["code"] == "context_length_exceeded"
    # A completion limit past the context is clamped, not refused.
    status, payload = _post(neuron, {"model": "short", "messages": MESSAGES, "max_tokens": 1000})
    assert status == 200
    assert payload["usage"]["total_tokens"] <= 64


def test_body_over_the_limit_is_413(start_neuron: Any, tmp_path: Path) -> None:
    config = tmp_path / "neuron.toml"
    config.write_text('max_request_bytes = "4KiB"\n')
    neuron = start_neuron("--config", str(config))
    status, payload = _post(
        neuron, {"model": "tiny", "messages": [{"role": "user", "content": "x" * 8000}]}
    )
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"


def test_unknown_route_and_method_are_enveloped(neuron: Neuron) -> None:
    response = neuron.get("/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()
    response = neuron.get("/v1/chat/completions")
    assert response.status_code == 405
    assert "error" in response.json()
