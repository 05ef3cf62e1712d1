"""Simulated neurons: what the gateway's ``NeuronClient`` would get from real ones, answered
from a model of each machine instead of over HTTP.

A node has device memory, a load bandwidth (disk or network to device), a memory bandwidth
that sets decode speed, and host memory for sleeping models. A load takes a fixed start-up
plus its bytes over the load bandwidth (loads on one node read one after another), and is
refused (507, as a neuron does) when the bytes do not fit. Each loaded model serves
``SLOTS`` requests at once (a batch), each at the node's decode speed for that model's size;
the rest wait in the neuron's queue, which its status reports (``queued``, ``queue_wait``)
as a real neuron's does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cortex.errors import InsufficientMemory, ModelLoadFailed
from cortex.gateway import clock
from cortex.gateway.state import NodeState
from cortex.protocol.lifecycle import (
    AvailableModel,
    DeviceInfo,
    ModelRecord,
    ModelState,
    NodeStatus,
)

SLOTS = 32  # requests a loaded model decodes at once (a continuous batch)
LOAD_OVERHEAD = 3.0  # seconds a load takes besides moving its bytes (start-up, warm-up)
UNLOAD_SECONDS = 0.5
PREFILL_SPEEDUP = 40.0  # prompt tokens per second, as a multiple of one stream's decode rate
HOST_BANDWIDTH = 20e9  # bytes/s between host memory and the device (sleep and wake)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    memory: int  # device memory for models, bytes
    load_bandwidth: float  # bytes/s from storage to device
    memory_bandwidth: float  # bytes/s of device memory: one stream decodes at this / model size
    host_memory: int = 0  # room for sleeping models' weights (0: this node cannot sleep models)


@dataclass(slots=True)
class Replica:
    model: str
    size: int
    loaded_at: float
    ready: bool = False
    asleep: bool = False
    leaving: bool = False  # an unload is under way
    last_used_at: float | None = None
    running: int = 0
    waiting: deque[tuple[float, Callable[[], None]]] = field(default_factory=deque)


@dataclass(slots=True)
class Counters:
    loads: int = 0
    wakes: int = 0
    expired: int = 0  # unloaded by the node itself after keep_alive idle


SPEEDS = ("known", "timed", "unknown")


class SimNode:
    def __init__(self, spec: NodeSpec, speeds: str = "known") -> None:
        self.spec = spec
        # What its status says of its read speed, as a neuron's /node does: ``known`` from
        # the start (neuron.toml load_speed, or a neuron that has loaded before), ``timed``
        # after its first load, ``unknown`` never (the gateway times whole loads itself).
        self.speeds = speeds
        self.timed = False
        self.replicas: dict[str, Replica] = {}
        self.used = 0  # device bytes held by models (loading ones included)
        self.host_used = 0
        self.reading_until = 0.0  # when its storage is done with the loads under way

    def decode_seconds(self, size: int, prompt: int, output: int) -> float:
        rate = self.spec.memory_bandwidth / max(size, 1)  # tokens/s of one stream
        return prompt / (rate * PREFILL_SPEEDUP) + output / rate

    def status(self) -> NodeStatus:
        records = [self._record(r) for r in self.replicas.values()]
        spec = self.spec
        device = DeviceInfo.model_construct(
            index=0,
            kind="cuda",
            name=spec.name,
            memory_total=spec.memory,
            memory_free=spec.memory - self.used,
            memory_used_by_models=self.used,
            memory_budget=spec.memory,
        )
        host_free = spec.host_memory - self.host_used if spec.host_memory else None
        return NodeStatus.model_construct(
            name=spec.name,
            version="sim",
            engine="sim",
            devices=[device],
            models=records,
            host_memory_free=host_free,
            load_speed=self._speed(),
        )

    def _speed(self) -> float | None:
        if self.speeds == "known" or (self.speeds == "timed" and self.timed):
            return self.spec.load_bandwidth
        return None

    def _record(self, r: Replica) -> ModelRecord:
        now = clock.monotonic()
        oldest = now - r.waiting[0][0] if r.waiting else 0.0
        state: ModelState = "sleeping" if r.asleep else ("ready" if r.ready else "loading")
        return ModelRecord.model_construct(
            id=r.model,
            state=state,
            source=r.model,
            devices=["cuda:0"],
            memory_bytes=r.size,  # a sleeping model keeps its size (a neuron reports it so)
            loaded_at=r.loaded_at,
            last_used_at=r.last_used_at,
            in_flight=r.running,
            queued=len(r.waiting),
            queue_wait=oldest,
            engine="sim",
            can_sleep=bool(self.spec.host_memory),
            kv_cache_bytes=0,
        )


class SimNeurons:
    """The gateway's ``NeuronClient``, answered by ``SimNode``s."""

    def __init__(
        self,
        specs: list[NodeSpec],
        sizes: Mapping[str, int],
        speeds: str = "known",
        keep_alive: float = 0.0,
    ) -> None:
        if speeds not in SPEEDS:
            raise ValueError(f"unknown speeds {speeds!r}: {', '.join(SPEEDS)}")
        self.nodes = {spec.name: SimNode(spec, speeds) for spec in specs}
        self.sizes = sizes
        self.counters = Counters()
        # Seconds a node keeps an idle model before unloading it on its own (Ollama's
        # keep_alive; 0: never), and who hears of it (the gateway, as a proxy's 404 tells it).
        self.keep_alive = keep_alive
        self.on_gone: Callable[[str], None] | None = None

    def holds(self, node: str, model: str) -> bool:
        replica = self.nodes[node].replicas.get(model)
        return replica is not None and replica.ready

    async def aclose(self) -> None:
        return None

    async def node(self, node: NodeState) -> NodeStatus:
        return self.nodes[node.name].status()

    async def available(self, node: NodeState) -> list[AvailableModel]:
        return []  # every model has a profile that says its size

    async def load(
        self,
        node: NodeState,
        model: str,
        source: str,
        progress: Any = None,
        *,
        options: Mapping[str, Any] | None = None,
    ) -> ModelRecord:
        sim = self.nodes[node.name]
        size = self.sizes[model]
        if model in sim.replicas:
            raise ModelLoadFailed(f"{model} is already on {node.name}")
        if sim.used + size > sim.spec.memory:
            raise InsufficientMemory(
                f"{model} needs {size} bytes, {sim.spec.memory - sim.used} free on {node.name}",
                extra={"needed_bytes": size},
            )
        sim.used += size
        replica = sim.replicas[model] = Replica(model, size, clock.wall())
        # Loads on one node share its storage: each reads after those before it.
        now = clock.monotonic()
        sim.reading_until = max(now, sim.reading_until) + size / sim.spec.load_bandwidth
        await asyncio.sleep(LOAD_OVERHEAD + sim.reading_until - now)
        replica.ready = True
        replica.loaded_at = clock.wall()
        sim.timed = True
        self.counters.loads += 1
        return sim._record(replica)

    async def unload(self, node: NodeState, model: str, *, force: bool = False) -> None:
        sim = self.nodes[node.name]
        replica = sim.replicas.get(model)
        if replica is None or replica.leaving:
            return
        replica.leaving = True
        await asyncio.sleep(UNLOAD_SECONDS)
        del sim.replicas[model]
        if replica.asleep:
            sim.host_used -= replica.size
        else:
            sim.used -= replica.size

    async def sleep(self, node: NodeState, model: str) -> None:
        sim = self.nodes[node.name]
        replica = sim.replicas[model]
        await asyncio.sleep(replica.size / HOST_BANDWIDTH)
        replica.asleep, replica.ready = True, False
        sim.used -= replica.size
        sim.host_used += replica.size

    async def wake(self, node: NodeState, model: str) -> ModelRecord:
        sim = self.nodes[node.name]
        replica = sim.replicas[model]
        if sim.used + replica.size > sim.spec.memory:
            raise InsufficientMemory(
                f"{model} needs {replica.size} bytes to wake on {node.name}",
                extra={"needed_bytes": replica.size},
            )
        sim.used += replica.size
        sim.host_used -= replica.size
        replica.asleep = False
        await asyncio.sleep(replica.size / HOST_BANDWIDTH)
        replica.ready = True
        self.counters.wakes += 1
        return sim._record(replica)

    async def defrag(self, node: NodeState) -> int:
        return 0

    # --- serving ------------------------------------------------------------------------

    def serve(self, node: str, model: str, start: Callable[[], None]) -> None:
        """A request for ``model`` reached ``node``: ``start`` runs when a slot is free."""
        replica = self.nodes[node].replicas[model]
        if replica.running < SLOTS:
            replica.running += 1
            start()
        else:
            replica.waiting.append((clock.monotonic(), start))

    def finished(self, node: str, model: str) -> None:
        """A request on ``node`` ended: its slot goes to the next waiting one."""
        replica = self.nodes[node].replicas[model]
        replica.last_used_at = clock.wall()
        if replica.waiting:
            _, start = replica.waiting.popleft()
            start()  # the slot passes on
        else:
            replica.running -= 1
            if self.keep_alive and not replica.running:
                stamp = replica.last_used_at
                loop = asyncio.get_running_loop()
                loop.call_later(self.keep_alive, self._expire, node, replica, stamp)

    def _expire(self, node: str, replica: Replica, stamp: float) -> None:
        """``keep_alive`` after ``replica`` went idle: unloaded, unless it served since."""
        sim = self.nodes[node]
        idle = not replica.running and not replica.waiting and replica.last_used_at == stamp
        if sim.replicas.get(replica.model) is not replica or not idle:
            return
        if not replica.ready or replica.leaving:
            return
        del sim.replicas[replica.model]
        sim.used -= replica.size
        self.counters.expired += 1
        if self.on_gone is not None:
            self.on_gone(node)
