"""An in-memory fleet of neurons that behaves like real ones toward the gateway."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cortex.errors import InsufficientMemory, ModelNotFound, NeuronUnavailable, SourceNotFound
from cortex.gateway.neurons import ProgressCallback
from cortex.gateway.state import NodeState
from cortex.protocol.lifecycle import AvailableModel, DeviceInfo, ModelRecord, NodeStatus


@dataclass
class FakeNode:
    name: str
    budget: int
    models: dict[str, ModelRecord] = field(default_factory=dict)
    up: bool = True

    def used(self) -> int:
        """What its models hold on the device (a sleeping one's weights are in host memory)."""
        return sum(r.memory_bytes for r in self.models.values() if r.state != "sleeping")


class FakeNeurons:
    """What the fleet sees of its neurons; records what happened for assertions."""

    def __init__(self, nodes: dict[str, int], sizes: dict[str, int], *, seed: int = 0) -> None:
        self.nodes = {name: FakeNode(name, budget) for name, budget in nodes.items()}
        self.sizes = sizes
        self.loading: dict[str, int] = {}  # model → loads running right now, fleet-wide
        self.max_parallel_loads: dict[str, int] = {}
        self.loads: list[tuple[str, str]] = []
        self.kv_cache_bytes: list[int | None] = []  # what each load asked for, in order
        self.options: list[dict[str, Any]] = []  # each load's options, in order
        self.unloads: list[tuple[str, str]] = []
        self.over_budget: list[str] = []
        self.random = random.Random(seed)
        self.node_delays: list[float] = []  # the next /node calls take this long, in order
        self.load_delay: float | None = None  # fixed load time (else a few random ms)
        self.defrags: list[str] = []
        self.can_sleep: set[str] = set()  # models whose engine can sleep
        self.host_memory_free: int | None = None  # what each node reports
        self.sleeps: list[tuple[str, str]] = []
        self.wakes: list[tuple[str, str]] = []

    async def aclose(self) -> None:
        return None

    async def node(self, node: NodeState) -> NodeStatus:
        fake = self._reach(node)
        models = [r.model_copy() for r in fake.models.values()]  # read now, answered later
        if self.node_delays:
            await asyncio.sleep(self.node_delays.pop(0))
        device = DeviceInfo(
            index=0, kind="cpu", name="fake", memory_total=fake.budget * 4,
            memory_free=fake.budget * 4, memory_used_by_models=fake.used(),
            memory_budget=fake.budget,
        )  # fmt: skip
        return NodeStatus(
            name=fake.name, version="0", engine="fake", devices=[device], models=models,
            host_memory_free=self.host_memory_free,
        )  # fmt: skip

    async def available(self, node: NodeState) -> list[AvailableModel]:
        self._reach(node)
        return []

    async def load(
        self,
        node: NodeState,
        model: str,
        source: str,
        progress: ProgressCallback | None = None,
        *,
        options: Mapping[str, Any] | None = None,
    ) -> ModelRecord:
        fake = self._reach(node)
        self.options.append(dict(options or {}))
        self.kv_cache_bytes.append((options or {}).get("kv_cache_bytes"))
        if model not in self.sizes:
            raise SourceNotFound(f"no source {source}")
        self.loading[model] = self.loading.get(model, 0) + 1
        self.max_parallel_loads[model] = max(
            self.max_parallel_loads.get(model, 0), self.loading[model]
        )
        try:
            delay = self.load_delay
            await asyncio.sleep(delay if delay is not None else self.random.uniform(0.001, 0.01))
            if model in fake.models:
                return fake.models[model]
            size = self.sizes[model]
            if fake.used() + size > fake.budget:
                raise InsufficientMemory(
                    f"needs {size}",
                    extra={"needed_bytes": size, "free_bytes": fake.budget - fake.used()},
                )
            now = time.time()
            record = ModelRecord(
                id=model, state="ready", source=source, memory_bytes=size, loaded_at=now,
                last_used_at=now, can_sleep=model in self.can_sleep,
            )  # fmt: skip
            fake.models[model] = record
            self.loads.append((node.name, model))
            if fake.used() > fake.budget:
                self.over_budget.append(node.name)
            return record
        finally:
            self.loading[model] -= 1

    async def unload(self, node: NodeState, model: str, *, force: bool = False) -> None:
        fake = self._reach(node)
        if model not in fake.models:
            raise ModelNotFound(f"{model} not loaded")
        await asyncio.sleep(0)
        del fake.models[model]
        self.unloads.append((node.name, model))

    async def sleep(self, node: NodeState, model: str) -> None:
        fake = self._reach(node)
        await asyncio.sleep(0)
        fake.models[model].state = "sleeping"
        self.sleeps.append((node.name, model))

    async def wake(self, node: NodeState, model: str) -> ModelRecord:
        fake = self._reach(node)
        await asyncio.sleep(0.001)
        record = fake.models[model]
        if fake.used() + record.memory_bytes > fake.budget:
            raise InsufficientMemory(f"waking {model} needs {record.memory_bytes}")
        record.state = "ready"
        self.wakes.append((node.name, model))
        return record

    async def defrag(self, node: NodeState) -> int:
        self._reach(node)
        self.defrags.append(node.name)
        return 0

    def _reach(self, node: NodeState) -> FakeNode:
        fake = self.nodes[node.name]
        if not fake.up:
            raise NeuronUnavailable(f"{node.name} is down")
        return fake
