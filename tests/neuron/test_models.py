"""The model registry in-process: waiting on loads, single flight, refusals."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from cortex.config import NeuronConfig
from cortex.errors import (
    Conflict,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    SourceNotFound,
)
from cortex.neuron import loader
from cortex.neuron.devices import discover
from cortex.neuron.engine.stats import EngineStatus
from cortex.neuron.loaded import LoadedModel
from cortex.neuron.models import ModelRegistry
from cortex.protocol.lifecycle import LoadRequest, ModelRecord


@pytest.fixture
def slow_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every weight load take 0.3 s longer and record each one."""
    calls: list[str] = []
    real = loader.load_weights

    def slow(path: Path, *args: Any) -> loader.LoadedWeights:
        calls.append(path.name)
        time.sleep(0.3)
        return real(path, *args)

    monkeypatch.setattr(loader, "load_weights", slow)
    return calls


def _registry(*allowed: Path, **config: Any) -> ModelRegistry:
    """A registry that may also read the folders in ``allowed`` (loaded here by path)."""
    return ModelRegistry(NeuronConfig(name="t", allowed_paths=list(allowed), **config), discover())


async def test_requests_wait_for_a_loading_model_and_loads_join(
    tmp_path: Path, tiny_model: Path, slow_loads: list[str]
) -> None:
    registry = _registry(tiny_model)
    request = LoadRequest(model="m", source=str(tiny_model))
    loads = [asyncio.create_task(registry.load(request)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert registry.record("m").state == "loading"
    waiting = await registry.acquire("m")  # blocks until the load is done
    assert waiting.record.state == "ready"
    records = await asyncio.gather(*loads)
    assert len(slow_loads) == 1
    assert {r.loaded_at for r in records} == {records[0].loaded_at}
    await registry.aclose()


async def test_the_read_speed_is_as_configured_until_a_load_is_timed(
    tiny_model: Path, slow_loads: list[str]
) -> None:
    registry = _registry(tiny_model, load_speed="3GB/s")
    assert registry.load_speed.value == 3e9
    await registry.load(LoadRequest(model="m", source=str(tiny_model)))
    # The weights took at least the 0.3 s the fixture adds: well under 3 GB/s.
    timed = registry.load_speed.value
    assert timed is not None
    assert 0 < timed <= registry.record("m").memory_bytes / 0.3
    await registry.aclose()


async def test_unknown_model_and_unknown_source(tmp_path: Path) -> None:
    registry = _registry(model_dirs=[tmp_path])
    with pytest.raises(ModelNotFound):
        await registry.acquire("nothing")
    with pytest.raises(SourceNotFound) as info:
        await registry.load(LoadRequest(model="nothing"))
    assert str(tmp_path) in info.value.message
    assert registry.records() == []


async def test_budget_counts_loads_in_flight(
    tiny_model: Path, tmp_path: Path, slow_loads: list[str]
) -> None:
    # Room for one tiny model (~0.56 MB in float32) but not two.
    registry = _registry(tiny_model, memory_budget=900_000)
    first = asyncio.create_task(registry.load(LoadRequest(model="a", source=str(tiny_model))))
    await asyncio.sleep(0.05)
    with pytest.raises(InsufficientMemory) as info:
        await registry.load(LoadRequest(model="b", source=str(tiny_model)))
    assert info.value.status == 507
    assert info.value.extra["needed_bytes"] > info.value.extra["free_bytes"]
    await first
    assert [r.id for r in registry.records()] == ["a"]
    await registry.aclose()


async def test_unload_waits_for_requests_in_flight(tiny_model: Path) -> None:
    registry = _registry(tiny_model)
    await registry.load(LoadRequest(model="m", source=str(tiny_model)))
    model = await registry.acquire("m")
    finished: list[str] = []

    async def request() -> None:
        with model.session():
            await asyncio.sleep(0.3)
            finished.append("request")

    task = asyncio.create_task(request())
    await asyncio.sleep(0.05)
    await registry.unload("m")
    finished.append("unload")
    await task
    assert finished == ["request", "unload"]
    assert registry.records() == []


async def test_broken_weights_fail_the_record_which_unloads_or_loads_again(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"\xff not safetensors " * 64)
    registry = _registry(tmp_path)
    request = LoadRequest(model="b", source=str(broken))
    for _ in range(2):  # a new load replaces the failed record, and fails the same way
        with pytest.raises(ModelLoadFailed, match="safetensors"):
            await registry.load(request)
        record = registry.record("b")
        assert record.state == "failed"
        assert record.error is not None
        assert "model.safetensors is not a valid safetensors file" in record.error
    with pytest.raises(ModelLoadFailed):
        await registry.acquire("b")
    assert (await registry.unload("b")).state == "failed"
    assert registry.records() == []

    with pytest.raises(ModelLoadFailed):
        await registry.load(request)
    shutil.copy(tiny_model / "model.safetensors", broken / "model.safetensors")
    assert (await registry.load(request)).state == "ready"
    assert registry.record("b").error is None
    await registry.aclose()


async def test_a_wrong_request_leaves_no_record(tiny_model: Path) -> None:
    registry = _registry(tiny_model)
    with pytest.raises(InvalidRequest) as info:
        await registry.load(LoadRequest(model="m", source=str(tiny_model), device="tpu9"))
    assert info.value.param == "device"
    with pytest.raises(InvalidRequest) as info:
        await registry.load(LoadRequest(model="m", source="~no-such-user-of-cortex/m"))
    assert info.value.param == "source"
    assert registry.records() == []


async def test_one_folder_however_spelled_is_loaded_once(tiny_model: Path, tmp_path: Path) -> None:
    registry = _registry(tmp_path, model_dirs=[tiny_model.parent])
    first = await registry.load(LoadRequest(model="m", source=str(tiny_model)))
    link = tmp_path / "link"
    link.symlink_to(tiny_model, target_is_directory=True)
    for source in (tiny_model.name, f"{tiny_model}/", str(link), f"{link}/"):
        again = await registry.load(LoadRequest(model="m", source=source))
        assert again.loaded_at == first.loaded_at
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    with pytest.raises(Conflict, match="already loaded from"):
        await registry.load(LoadRequest(model="m", source=str(other)))
    await registry.aclose()


async def test_folders_outside_the_places_are_not_read(tiny_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "out").symlink_to(tiny_model, target_is_directory=True)
    registry = _registry(model_dirs=[models])
    for request in (
        LoadRequest(model="m", source=str(tiny_model)),
        LoadRequest(model="out"),
        LoadRequest(model="m", source=f"../{tiny_model.name}"),
        LoadRequest(model=str(tiny_model)),
    ):
        with pytest.raises(SourceNotFound) as info:
            await registry.load(request)
        sent = repr(request.source or request.model)  # what the client sent is said back
        assert str(tiny_model) not in info.value.message.replace(sent, "")
        assert registry.records() == []
    with pytest.raises(SourceNotFound):
        await registry.tokenizer_for("m", str(tiny_model))
    with pytest.raises(SourceNotFound):
        await registry.tokenizer_for("out")
    await registry.aclose()


class _FiguresOnly:
    """A harness reduced to the figures the registry's views read, as the test sets them."""

    def __init__(self, status: EngineStatus) -> None:
        self.status = status
        self.num_running = status.num_running
        self.num_waiting = status.num_waiting
        self.cached_tokens = status.cached_tokens
        self.failure: str | None = None  # it can generate (it never does here)

    def queue_wait(self) -> float:
        return 0.0


def test_records_and_metrics_carry_the_kv_cache_figures() -> None:
    registry = _registry()
    status = EngineStatus(
        num_running=1, cached_tokens=20, kv_block_size=16, kv_blocks_total=64, kv_blocks_used=5,
        kv_blocks_cached=9, kv_cache_bytes=1 << 20, prefix_queried_tokens=80,
        prefix_hit_tokens=60, prefill_tokens=20, preemptions=2,
    )  # fmt: skip
    record = ModelRecord(id="m", state="ready", source="s", memory_bytes=2 << 20)
    harness: Any = _FiguresOnly(status)
    weights: Any = None
    registry._records["m"] = record
    registry._ready["m"] = LoadedModel(record, registry.devices[0], weights, harness)

    got = registry.record("m")
    assert (got.kv_cache_bytes, got.kv_block_size) == (1 << 20, 16)
    assert (got.kv_blocks_total, got.kv_blocks_used) == (64, 5)
    assert got.prefix_cache_hit_ratio == 0.75
    assert record.kv_blocks_total == 0  # the stored record is left as it was
    text = registry.metrics.render().decode()
    assert 'cortex_neuron_kv_blocks{model="m",state="free"} 50.0' in text
    assert 'cortex_neuron_preemptions_total{model="m"} 2.0' in text
