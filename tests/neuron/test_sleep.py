"""Sleep as a memory tier, through the registry: refusals, accounting, wakes.

vLLM's sleep mode needs CUDA, so a harness that sleeps is stood in for here: the real
transformers harness of the tiny model, with sleep and wake that record their calls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cortex.config import NeuronConfig
from cortex.errors import InsufficientMemory, InvalidRequest
from cortex.neuron.devices import discover
from cortex.neuron.models import ModelRegistry
from cortex.protocol.lifecycle import LoadRequest


class Sleepy:
    """A harness that can sleep: the real one, plus sleep and wake."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def sleep_refusal(self) -> str | None:
        return None

    async def sleep(self) -> None:
        self.calls.append("sleep")

    async def wake(self) -> None:
        await asyncio.sleep(0.05)
        self.calls.append("wake")


def _registry(tiny_model: Path, **config: Any) -> ModelRegistry:
    return ModelRegistry(NeuronConfig(name="t", allowed_paths=[tiny_model], **config), discover())


async def _load(registry: ModelRegistry, model: str, tiny_model: Path) -> Sleepy:
    await registry.load(LoadRequest(model=model, source=str(tiny_model)))
    loaded = registry._ready[model]
    sleepy = Sleepy(loaded.harness)
    loaded.harness = sleepy  # type: ignore[assignment]
    return sleepy


def _used(registry: ModelRegistry) -> int:
    return registry.device_infos()[0].memory_used_by_models


async def test_the_transformers_engine_cannot_sleep_and_says_so(tiny_model: Path) -> None:
    registry = _registry(tiny_model)
    try:
        await registry.load(LoadRequest(model="m", source=str(tiny_model)))
        with pytest.raises(InvalidRequest, match="transformers engine has no sleep mode"):
            await registry.sleeper.sleep("m")
        assert registry.record("m").state == "ready"
    finally:
        await registry.aclose()


async def test_a_sleeping_model_gives_its_memory_back_and_wakes_on_a_request(
    tiny_model: Path,
) -> None:
    registry = _registry(tiny_model)
    try:
        sleepy = await _load(registry, "m", tiny_model)
        held = registry.record("m").memory_bytes
        assert _used(registry) == held
        record = await registry.sleeper.sleep("m")
        assert record.state == "sleeping"
        assert _used(registry) == 0
        # A request for it wakes it (once, however many ask), then it serves.
        models = await asyncio.gather(*(registry.acquire("m") for _ in range(3)))
        assert {m.record.state for m in models} == {"ready"}
        assert sleepy.calls == ["sleep", "wake"]
        assert _used(registry) == held
        samples = registry.metrics.render().decode()
        assert 'cortex_neuron_model_load_duration_seconds_count{kind="wake",model="m"} 1.0' in (
            samples
        )
    finally:
        await registry.aclose()


async def test_sleep_waits_for_requests_in_flight(tiny_model: Path) -> None:
    registry = _registry(tiny_model)
    try:
        sleepy = await _load(registry, "m", tiny_model)
        model = await registry.acquire("m")

        async def request() -> None:
            with model.session():
                await asyncio.sleep(0.2)
                sleepy.calls.append("request done")

        task = asyncio.create_task(request())
        await asyncio.sleep(0.02)
        await registry.sleeper.sleep("m")
        await task
        assert sleepy.calls == ["request done", "sleep"]
    finally:
        await registry.aclose()


async def test_a_request_while_it_drains_wakes_it_after_it_is_asleep(tiny_model: Path) -> None:
    registry = _registry(tiny_model)
    try:
        sleepy = await _load(registry, "m", tiny_model)
        model = await registry.acquire("m")

        async def request() -> None:
            with model.session():
                await asyncio.sleep(0.2)
                sleepy.calls.append("request done")

        task = asyncio.create_task(request())
        await asyncio.sleep(0.02)
        falling = asyncio.create_task(registry.sleeper.sleep("m"))
        await asyncio.sleep(0.02)
        woken = await registry.acquire("m")  # arrives while the first request drains
        await asyncio.gather(task, falling)
        assert sleepy.calls == ["request done", "sleep", "wake"]
        assert woken.record.state == "ready"
    finally:
        await registry.aclose()


async def test_a_wake_that_no_longer_fits_is_a_507(tiny_model: Path) -> None:
    # Room for one tiny model and its KV cache, not two.
    registry = _registry(tiny_model, memory_budget=3_000_000, kv_cache_bytes=1_000_000)
    try:
        await _load(registry, "a", tiny_model)
        await registry.sleeper.sleep("a")
        await registry.load(LoadRequest(model="b", source=str(tiny_model)))  # a's room
        with pytest.raises(InsufficientMemory) as info:
            await registry.sleeper.wake("a")
        assert info.value.status == 507
        assert registry.record("a").state == "sleeping"
        await registry.unload("b")
        assert (await registry.sleeper.wake("a")).state == "ready"
    finally:
        await registry.aclose()
