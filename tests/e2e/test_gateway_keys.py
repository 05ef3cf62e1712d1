"""API keys at a real gateway, through the official ``openai`` and ``anthropic`` SDKs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.procs import Gateway, Neuron

pytestmark = pytest.mark.e2e

HELLO: list[Any] = [{"role": "user", "content": "Say hello."}]
ALICE, LIMITED, OPS, FILED = "sk-alice-0123", "sk-limited-4567", "sk-ops-89ab", "sk-filed-cdef"
KEYS = f"""keys_file = "keys.toml"
[[keys]]
name = "alice"
key = "{ALICE}"
models = ["m1", "claude-*"]
[[keys]]
name = "limited"
key = "{LIMITED}"
requests_per_minute = 2
[[keys]]
name = "ops"
key = "{OPS}"
admin = true
"""
MODELS = (
    '[[models]]\nid = "m1"\npinned = true\n[[models]]\nid = "m2"\n[aliases]\n"claude-*" = "m1"\n'
)


@dataclass
class Fleet:
    neuron: Neuron
    gateway: Gateway
    workdir: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, fleet_dir: Path) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("keys")
    workdir = logs / "gateway"
    workdir.mkdir()
    digest = hashlib.sha256(FILED.encode()).hexdigest()
    (workdir / "keys.toml").write_text(f'[[keys]]\nname = "filed"\nkey_sha256 = "{digest}"\n')
    neuron = Neuron(["--model-dir", str(fleet_dir), "--name", "a"], logs / "neuron.log")
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        gateway = Gateway({"a": neuron}, MODELS, workdir, top=KEYS)
        gateway.wait_ready()
        yield Fleet(neuron, gateway, workdir)
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def _openai(fleet: Fleet, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.gateway.url}/v1", api_key=key, max_retries=0)


def _anthropic(fleet: Fleet, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fleet.gateway.url, api_key=key, max_retries=0)


def _ask(fleet: Fleet, key: str, model: str = "m1") -> Any:
    with _openai(fleet, key) as client:
        return client.chat.completions.create(model=model, messages=HELLO, max_tokens=4)


def _message(fleet: Fleet, key: str, model: str) -> Any:
    with _anthropic(fleet, key) as client:
        return client.messages.create(model=model, max_tokens=4, messages=HELLO)


def test_no_key_and_a_wrong_key_are_401_in_each_dialect(fleet: Fleet) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        _ask(fleet, "sk-nope")
    assert wrong.value.code == "invalid_api_key"
    bare = fleet.gateway.post("/v1/chat/completions", json={"model": "m1", "messages": HELLO})
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError) as refused:
        _message(fleet, "sk-nope", "m1")
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    models = fleet.gateway.get("/v1/models")
    assert models.status_code == 401
    assert fleet.gateway.get("/health").status_code == 200
    assert fleet.gateway.get("/fleet").status_code == 200


def test_a_key_uses_its_models_only_by_id_or_alias(fleet: Fleet) -> None:
    assert _ask(fleet, ALICE).choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError) as refused:
        _ask(fleet, ALICE, "m2")
    with pytest.raises(openai.NotFoundError) as unknown:
        _ask(fleet, ALICE, "no-such-model")
    assert refused.value.code == unknown.value.code == "model_not_found"
    # The anthropic SDK sends x-api-key; Claude Code's names reach m1 through the alias.
    reply = _message(fleet, ALICE, "claude-sonnet-4-6")
    assert reply.model == "claude-sonnet-4-6"
    with pytest.raises(anthropic.NotFoundError):
        _message(fleet, ALICE, "m2")


def test_models_lists_what_the_key_may_use(fleet: Fleet) -> None:
    with _openai(fleet, ALICE) as alice, _anthropic(fleet, ALICE) as claude:
        assert [m.id for m in alice.models.list()] == ["m1"]
        assert [m.id for m in claude.models.list()] == ["m1"]
    with _openai(fleet, OPS) as ops:
        everything = {m.id for m in ops.models.list()}
    assert {"m1", "m2", "m3", "trained"} <= everything


def test_past_requests_per_minute_is_429_with_retry_after(fleet: Fleet) -> None:
    _ask(fleet, LIMITED)
    _ask(fleet, LIMITED)
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(fleet, LIMITED)
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    with pytest.raises(anthropic.RateLimitError) as again:
        _message(fleet, LIMITED, "m1")
    assert again.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert _ask(fleet, ALICE).choices  # another key is not held back
    text = httpx.get(f"{fleet.gateway.metrics_url}/metrics", timeout=10).text
    assert any('key="limited"' in r and 'status="429"' in r for r in text.splitlines())


def _cortex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cortex", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env={**_env(), **env}
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CORTEX_API_KEY"}


def test_operator_routes_need_an_admin_key(fleet: Fleet) -> None:
    gateway = fleet.gateway
    _ask(fleet, OPS, "m2")
    assert "m2" in gateway.loaded("a")
    user = gateway.post("/fleet/unload", json={"model": "m2"}, headers=_bearer(ALICE))
    assert user.status_code == 403
    assert user.json()["error"]["type"] == "permission_error"
    assert gateway.post("/fleet/unload", json={"model": "m2"}).status_code == 401
    refused = _cortex("unload", "m2", "-g", gateway.url, "--api-key", ALICE)
    assert refused.returncode == 1
    assert "not an admin key" in refused.stderr
    assert "m2" in gateway.loaded("a")
    done = _cortex("unload", "m2", "-g", gateway.url, CORTEX_API_KEY=OPS)
    assert done.returncode == 0, done.stderr
    assert "m2" not in gateway.loaded("a")
    loaded = _cortex("load", "m2", "-g", gateway.url, "--api-key", OPS)
    assert loaded.returncode == 0, loaded.stderr
    assert "m2" in gateway.loaded("a")


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_sighup_reads_the_key_file_again(fleet: Fleet) -> None:
    assert _ask(fleet, FILED).choices
    added = _cortex("keys", "add", "newcomer", "--config", str(fleet.workdir / "cortex.toml"))
    assert added.returncode == 0, added.stderr
    newcomer = added.stdout.strip()
    with pytest.raises(openai.AuthenticationError):
        _ask(fleet, newcomer)
    fleet.gateway.process.send_signal(signal.SIGHUP)
    _eventually(lambda: _status(fleet, newcomer) == 200)
    assert _ask(fleet, newcomer).choices

    keys_file = fleet.workdir / "keys.toml"
    good = keys_file.read_text()
    keys_file.write_text(good + "[[keys]]\nname = 'broken'\n")
    fleet.gateway.process.send_signal(signal.SIGHUP)
    _eventually(lambda: "keys not reloaded" in fleet.gateway.log())
    assert _status(fleet, newcomer) == 200  # the old keys stay
    assert newcomer not in fleet.gateway.log()
    keys_file.write_text(good)


def _status(fleet: Fleet, key: str) -> int:
    body = {"model": "m1", "messages": HELLO, "max_tokens": 2}
    return fleet.gateway.post("/v1/chat/completions", json=body, headers=_bearer(key)).status_code


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_requests_and_tokens_are_counted_per_key(fleet: Fleet) -> None:
    _ask(fleet, ALICE)
    text = httpx.get(f"{fleet.gateway.metrics_url}/metrics", timeout=10).text
    rows = [row for row in text.splitlines() if 'key="alice"' in row]
    assert any(r.startswith("cortex_requests_total{") and 'status="200"' in r for r in rows)
    assert any(r.startswith("cortex_prompt_tokens_total{") for r in rows)
    assert any(r.startswith("cortex_generation_tokens_total{") for r in rows)
    for secret in (ALICE, LIMITED, OPS, FILED):
        assert secret not in text
        assert secret not in fleet.gateway.log()


def test_sighup_without_a_key_file_does_not_stop_the_gateway(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    neuron = start_neuron("--model-dir", str(fleet_dir), "--name", "a")
    gateway = start_gateway({"a": neuron}, "")
    gateway.process.send_signal(signal.SIGHUP)
    _eventually(lambda: "nothing to read again" in gateway.log())
    assert gateway.process.poll() is None
    assert gateway.get("/health").status_code == 200
