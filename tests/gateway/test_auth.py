"""API keys: matching, rate windows, concurrency, reloads, and the gateway's routes with keys."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cortex.config import (
    CortexConfig,
    GatewaySection,
    KeyEntry,
    ModelProfile,
    ModelsConfig,
)
from cortex.errors import ConfigError, Forbidden, ModelNotFound, Overloaded, Unauthorized
from cortex.gateway.app import GatewayApp, GatewayService, is_loopback
from cortex.gateway.auth import KeyTable, load_entries
from tests.gateway.fakes import FakeNeurons
from tests.gateway.test_proxy import HELLO, FakeChat, serve_fleet


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(*entries: KeyEntry, clock: Clock | None = None, **config: Any) -> KeyTable:
    return KeyTable(CortexConfig(keys=list(entries), **config), clock or Clock())


def _bearer(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + secret.encode())]


def test_a_key_comes_as_bearer_or_x_api_key() -> None:
    table = _table(KeyEntry(name="laptop", key="sk-one"))
    assert table.authenticate(_bearer("sk-one")).name == "laptop"
    assert table.authenticate([(b"authorization", b"bearer  sk-one ")]).name == "laptop"
    assert table.authenticate([(b"x-api-key", b"sk-one")]).name == "laptop"
    # Both sent (an SDK with a stale environment variable): the one that is a key counts.
    both = [(b"x-api-key", b"sk-one"), (b"authorization", b"Bearer old")]
    assert table.authenticate(both).name == "laptop"
    with pytest.raises(Unauthorized, match="Missing API key"):
        table.authenticate([(b"authorization", b"Basic abc")])


def test_missing_and_unknown_keys_are_refused_without_echoing_them() -> None:
    table = _table(KeyEntry(name="laptop", key="sk-one"))
    with pytest.raises(Unauthorized, match="Missing API key"):
        table.authenticate([(b"content-type", b"application/json")])
    with pytest.raises(Unauthorized) as wrong:
        table.authenticate(_bearer("sk-secret-guess"))
    assert "sk-secret-guess" not in wrong.value.message


def test_a_key_given_by_its_sha256_only() -> None:
    digest = hashlib.sha256(b"sk-hashed").hexdigest().upper()
    table = _table(KeyEntry(name="ci", key_sha256=digest))
    assert table.authenticate(_bearer("sk-hashed")).name == "ci"
    assert "sk-hashed" not in repr(KeyEntry(name="x", key="sk-hashed"))


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "a"},
        {"name": "a", "key": "k", "key_sha256": "0" * 64},
        {"name": "a", "key_sha256": "abc"},
        {"name": "", "key": "k"},
        {"name": "a", "key": "k", "requests_per_minute": 0},
    ],
)
def test_bad_entries_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        KeyEntry(**fields)


def test_names_and_secrets_are_unique() -> None:
    with pytest.raises(ConfigError, match="name is used twice"):
        load_entries(CortexConfig(keys=[KeyEntry(name="a", key="1"), KeyEntry(name="a", key="2")]))
    same = hashlib.sha256(b"1").hexdigest()
    with pytest.raises(ConfigError, match="secret is used twice"):
        load_entries(
            CortexConfig(keys=[KeyEntry(name="a", key="1"), KeyEntry(name="b", key_sha256=same)])
        )


def test_operator_actions_need_an_admin_key() -> None:
    table = _table(KeyEntry(name="user", key="u"), KeyEntry(name="ops", key="o", admin=True))
    assert table.operator(_bearer("o")).name == "ops"
    with pytest.raises(Forbidden):
        table.operator(_bearer("u"))
    with pytest.raises(Unauthorized):
        table.operator([])


def test_model_globs_match_the_name_sent_or_the_model_it_resolves_to() -> None:
    table = _table(KeyEntry(name="k", key="k", models=["qwen3-*", "claude-*"]))
    key = table.authenticate(_bearer("k"))
    assert key.may_use("qwen3-8b", "qwen3-8b")
    assert key.may_use("claude-sonnet-4", "coder")  # the alias the client used
    assert key.may_use("fast", "qwen3-0.6b")  # the model an alias leads to
    assert not key.may_use("coder", "coder")
    with pytest.raises(ModelNotFound, match="'coder' does not exist"):
        key.admit("coder", "coder")
    assert key.may_list("coder", ["claude-*"])
    assert not key.may_list("llama", ["fast-llama"])
    unlimited = _table(KeyEntry(name="all", key="a")).authenticate(_bearer("a"))
    assert unlimited.may_use("anything", "anything")


def test_requests_per_minute_is_a_sliding_window_with_retry_after() -> None:
    clock = Clock()
    key = _table(KeyEntry(name="k", key="k", requests_per_minute=2), clock=clock).authenticate(
        _bearer("k")
    )
    key.admit("m", "m")
    clock.now += 20
    key.admit("m", "m")
    clock.now += 10  # 30 s after the first: two in the window
    with pytest.raises(Overloaded) as refused:
        key.admit("m", "m")
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "30"}  # when the first leaves the window
    clock.now += 29.5
    with pytest.raises(Overloaded) as again:
        key.admit("m", "m")
    assert again.value.headers == {"Retry-After": "1"}
    clock.now += 0.5
    key.admit("m", "m")  # the first left the window
    with pytest.raises(Overloaded) as third:
        key.admit("m", "m")
    assert third.value.headers == {"Retry-After": "20"}
    clock.now += 3600  # an idle hour empties the window
    key.admit("m", "m")
    key.admit("m", "m")
    with pytest.raises(Overloaded):
        key.admit("m", "m")


def test_max_concurrent_counts_until_released() -> None:
    key = _table(KeyEntry(name="k", key="k", max_concurrent=2)).authenticate(_bearer("k"))
    key.admit("m", "m")
    key.admit("m", "m")
    with pytest.raises(Overloaded) as refused:
        key.admit("m", "m")
    assert refused.value.headers == {"Retry-After": "1"}
    key.release()
    key.admit("m", "m")


def test_a_refusal_for_concurrency_does_not_spend_the_rate() -> None:
    key = _table(KeyEntry(name="k", key="k", max_concurrent=1, requests_per_minute=2)).authenticate(
        _bearer("k")
    )
    key.admit("m", "m")
    with pytest.raises(Overloaded):
        key.admit("m", "m")
    key.release()
    key.admit("m", "m")  # the second of two per minute, not refused by the window


def _write_keys(path: Path, *blocks: str) -> None:
    path.write_text("\n".join(blocks))


def _block(name: str, secret: str, extra: str = "") -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f'[[keys]]\nname = "{name}"\nkey_sha256 = "{digest}"\n{extra}\n'


def test_reload_takes_new_keys_and_keeps_the_old_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.toml"
    _write_keys(path, _block("laptop", "sk-1", "max_concurrent = 1"))
    table = KeyTable(CortexConfig(keys_file=path), Clock())
    laptop = table.authenticate(_bearer("sk-1"))
    laptop.admit("m", "m")  # one in flight across the reload

    _write_keys(path, _block("laptop", "sk-1", "max_concurrent = 1"), "[[keys]]\nname = 'x'\n")
    assert not table.reload()
    assert "keys not reloaded" in caplog.text
    assert "sk-1" not in caplog.text
    assert table.authenticate(_bearer("sk-1")) is laptop  # the old table, untouched

    _write_keys(path, _block("laptop", "sk-1", "max_concurrent = 1"), _block("phone", "sk-2"))
    assert table.reload()
    assert table.authenticate(_bearer("sk-2")).name == "phone"
    with pytest.raises(Overloaded):  # the laptop's request in flight still counts
        table.authenticate(_bearer("sk-1")).admit("m", "m")
    laptop.release()
    table.authenticate(_bearer("sk-1")).admit("m", "m")

    path.write_bytes(b"\xff\xfe[[keys]]\n")
    assert not table.reload()
    assert "not UTF-8" in caplog.text
    path.unlink()
    assert not table.reload()
    assert table.authenticate(_bearer("sk-2")).name == "phone"


def test_a_keys_file_alone_closes_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("")
    table = KeyTable(CortexConfig(keys_file=path))
    assert table.enabled
    with pytest.raises(Unauthorized):
        table.authenticate(_bearer("anything"))
    assert not KeyTable(CortexConfig()).enabled


# --- the gateway's routes with keys, in-process ------------------------------------------


@dataclass
class Rig:
    url: str
    app: GatewayApp
    chat: FakeChat


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    chat = FakeChat("a")
    keys = [
        KeyEntry(name="m0-only", key="sk-m0", models=["m0"], max_concurrent=1),
        KeyEntry(name="ops", key="sk-ops", admin=True),
    ]
    models = ModelsConfig(
        models=[ModelProfile(id="m0", neurons=["a"]), ModelProfile(id="m1", neurons=["a"])],
        aliases={"gpt-4o": "m0", "other": "m1"},
    )
    gateway = GatewaySection(poll_interval=0.05, request_timeout=0.3, load_timeout=5)
    sizes = {"m0": 100, "m1": 100}
    async with serve_fleet({"a": chat}, sizes, models, gateway, keys) as (url, app, _):
        yield Rig(url, app, chat)


async def _chat(rig: Rig, model: str, key: str | None, timeout: float = 5.0) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=timeout) as client:
        body = {"model": model, "messages": HELLO}
        return await client.post(f"{rig.url}/v1/chat/completions", json=body, headers=headers)


async def test_a_model_outside_the_key_is_refused_like_an_unknown_one(rig: Rig) -> None:
    assert (await _chat(rig, "gpt-4o", "sk-m0")).status_code == 200
    forbidden = await _chat(rig, "m1", "sk-m0")
    unknown = await _chat(rig, "no-such-model", "sk-ops")
    assert forbidden.status_code == unknown.status_code == 404
    assert forbidden.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert forbidden.json()["error"]["message"] == "The model 'm1' does not exist"
    assert (await _chat(rig, "m0", None)).json()["error"]["type"] == "authentication_error"
    metrics = rig.app.metrics.render().decode()
    assert 'dialect="chat",key="m0-only",model="m0",node="a",status="200"' in metrics
    assert 'cortex_prompt_tokens_total{key="m0-only",model="m0",node="a"} 3.0' in metrics


async def test_the_slot_is_released_when_the_client_leaves_or_the_neuron_fails(rig: Rig) -> None:
    rig.chat.stall = 5.0
    with pytest.raises(httpx.ReadTimeout):
        await _chat(rig, "m0", "sk-m0", timeout=0.2)
    await asyncio.wait_for(rig.chat.disconnected.wait(), 2.0)
    rig.chat.stall = 0.0
    assert (await _chat(rig, "m0", "sk-m0")).status_code == 200
    rig.chat.stall = 1.0  # past request_timeout: a 504
    assert (await _chat(rig, "m0", "sk-m0")).status_code == 504
    rig.chat.stall = 0.0
    assert (await _chat(rig, "m0", "sk-m0")).status_code == 200


async def test_listings_and_operator_routes_follow_the_key(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.url, timeout=5.0) as client:
        listed = await client.get("/v1/models", headers={"x-api-key": "sk-m0"})
        assert [m["id"] for m in listed.json()["data"]] == ["m0"]
        anthropic = await client.get(
            "/v1/models", headers={"x-api-key": "sk-m0", "anthropic-version": "2023-06-01"}
        )
        assert [m["id"] for m in anthropic.json()["data"]] == ["m0"]
        refused = await client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert len((await client.get("/v1/models", headers=_auth("sk-ops"))).json()["data"]) == 2
        body = {"model": "m0"}
        assert (await client.post("/fleet/unload", json=body)).status_code == 401
        user = await client.post("/fleet/unload", json=body, headers=_auth("sk-m0"))
        assert user.status_code == 403
        assert user.json()["error"]["type"] == "permission_error"
        assert (await client.post("/fleet/load", json=body, headers=_auth("sk-ops"))).is_success
        assert (await client.get("/fleet")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        messages = await client.post("/v1/messages", json={"model": "m0"})
        assert messages.json()["type"] == "error"
        assert messages.json()["error"]["type"] == "authentication_error"
        count = await client.post(
            "/v1/messages/count_tokens",
            json={"model": "m1", "messages": HELLO},
            headers={"x-api-key": "sk-m0"},
        )
        assert count.status_code == 404
        assert count.json()["error"]["type"] == "not_found_error"


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "gateway.lan"))


@pytest.mark.parametrize("keys", [[], [KeyEntry(name="k", key="k")]])
async def test_an_open_gateway_off_loopback_is_warned_about(
    keys: list[KeyEntry], caplog: pytest.LogCaptureFixture
) -> None:
    config = CortexConfig(gateway=GatewaySection(poll_interval=0.05), keys=keys)
    app = GatewayApp(config, ModelsConfig(), client=FakeNeurons({}, {}))  # type: ignore[arg-type]
    service = GatewayService(app, ("0.0.0.0", 0), ("127.0.0.1", 0))
    await service.start()
    await service.stop()
    assert ("no API keys" in caplog.text) == (not keys)
