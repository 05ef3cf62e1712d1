"""One policy over one trace: the gateway's real fleet owner (``gateway.fleet.Fleet``, with its
router and evictor) on virtual time, over simulated neurons, fed the trace's requests the way
the proxy feeds it real ones.

A request goes where ``pick_ready`` says, counted in flight as the proxy counts it; a model
ready nowhere goes through ``Fleet.ensure`` (a cold start: the request waits for the load,
within ``request_timeout``). A request that cannot be placed is refused; one still waiting
at its deadline times out. What it measures is in ``Result``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cortex.config import (
    CortexConfig,
    EvictionSection,
    GatewaySection,
    ModelProfile,
    ModelsConfig,
    NeuronEntry,
    PlacementSection,
)
from cortex.errors import CortexError
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.router import Placement, Unplaceable, pick_ready, plan
from cortex.sim import loop
from cortex.sim.neurons import NodeSpec, SimNeurons
from cortex.sim.trace import GB, Trace

SAMPLE_EVERY = 300.0  # seconds between samples of memory in use


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    strategy: str = "lru"  # cortex.toml [eviction] strategy
    placement: str = "first-fit"  # cortex.toml [placement] strategy
    replica_after: float = 0.0  # [placement] replica_after (0: one copy per model)
    home: bool = False  # each model on one fixed node (per-host, llama-swap/Ollama style)
    random: bool = False  # each load on a random node where it may go
    sleep: bool = False  # nodes keep evicted models asleep in host memory where they can
    keep_alive: float = 0.0  # nodes unload a model idle this long on their own (Ollama's TTL)
    about: str = ""


@dataclass
class Result:
    policy: str
    requests: int = 0
    served: int = 0
    refused: int = 0
    timed_out: int = 0
    cold_loads: int = 0  # loads from storage that requests waited for (wakes apart)
    replica_loads: int = 0  # loads of another copy of a busy model (nobody waits on them)
    wakes: int = 0
    cold_waits: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    evictions: dict[str, int] = field(default_factory=dict)
    memory_samples: list[float] = field(default_factory=list)  # share of device memory held
    wall_seconds: float = 0.0
    simulated_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        def q(values: list[float], p: float) -> float:
            return float(np.percentile(values, p)) if values else 0.0

        per_1000 = 1000 * self.cold_loads / self.requests if self.requests else 0.0
        memory = self.memory_samples
        return {
            "policy": self.policy,
            "requests": self.requests,
            "cold_loads": self.cold_loads,
            "cold_loads_per_1000": round(per_1000, 3),
            "replica_loads": self.replica_loads,
            "wakes": self.wakes,
            "cold_start_p50_s": round(q(self.cold_waits, 50), 2),
            "cold_start_p95_s": round(q(self.cold_waits, 95), 2),
            "cold_starts": len(self.cold_waits),
            "refused": self.refused,
            "timed_out": self.timed_out,
            "evictions": dict(sorted(self.evictions.items())),
            "queue_wait_p95_s": round(q(self.queue_waits, 95), 3),
            "memory_used_mean": round(float(np.mean(memory)), 3) if memory else 0.0,
            "memory_used_series": [round(m, 3) for m in memory],
            "simulated_hours": round(self.simulated_seconds / 3600, 2),
            "wall_seconds": round(self.wall_seconds, 1),
        }


class SimFleet(Fleet):
    """The gateway's fleet owner as it is, counting the replicas it starts on its own (no
    request waits for those: they are not cold starts)."""

    replicas = 0

    def _add_replica(self, model: str) -> None:
        already = model in self.snapshot.pending
        super()._add_replica(model)
        if not already and model in self.snapshot.pending:
            self.replicas += 1


class RandomFleet(SimFleet):
    """The random-placement baseline: each load on a node drawn at random among those where
    the model may go (then evicting there by LRU), instead of the router's choice."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = random.Random(seed)

    def _plan(self, model: str, only: str | None = None) -> Placement | Unplaceable:
        if only is not None:
            return super()._plan(model, only)
        nodes = list(self.snapshot.allowed_nodes(model))
        self._rng.shuffle(nodes)
        busy, recent, uses = self.in_flight.busy, self.in_flight.last_used, self.in_flight.uses
        for node in nodes:
            decision = plan(self.snapshot, model, busy, only=node, recent=recent, uses=uses)
            if isinstance(decision, Placement):
                return decision
        return plan(self.snapshot, model, busy, recent=recent, uses=uses)  # why it cannot


def home_nodes(trace: Trace, specs: list[NodeSpec]) -> dict[str, str]:
    """Per-host placement: each model's one host, a seeded draw among the nodes big enough
    for it (as a static route per model to a llama-swap or Ollama host would be)."""
    rng = random.Random(1)
    homes: dict[str, str] = {}
    for model, size in zip(trace.models, trace.sizes, strict=True):
        fits = [s.name for s in specs if s.memory >= size]
        if fits:  # else it fits nowhere: its requests are refused
            homes[model] = rng.choice(fits)
    return homes


def fleet_config(
    trace: Trace, specs: list[NodeSpec], policy: Policy, poll_interval: float, timeout: float
) -> tuple[CortexConfig, ModelsConfig]:
    neurons = [
        NeuronEntry(name=spec.name, endpoint=f"http://127.0.0.1:{20000 + i}")
        for i, spec in enumerate(specs)
    ]
    config = CortexConfig(
        gateway=GatewaySection(
            poll_interval=poll_interval, load_timeout=timeout, request_timeout=timeout
        ),
        eviction=EvictionSection(strategy=policy.strategy, defrag_after_cycles=0),
        placement=PlacementSection(strategy=policy.placement, replica_after=policy.replica_after),
        neurons=neurons,
    )
    homes = home_nodes(trace, specs) if policy.home else {}

    def allowed(model: str) -> list[str]:
        if not policy.home:
            return []  # any node
        return [homes[model]] if model in homes else ["(none)"]  # fits no node: refused

    profiles = [
        ModelProfile(
            id=model,
            memory=size,
            neurons=allowed(model),
        )
        for model, size in zip(trace.models, trace.sizes, strict=True)
    ]
    return config, ModelsConfig(models=profiles)


async def simulate(
    trace: Trace,
    specs: list[NodeSpec],
    policy: Policy,
    *,
    poll_interval: float = 60.0,
    timeout: float = 600.0,
    seed: int = 0,
    speeds: str = "known",
) -> Result:
    if policy.sleep:
        specs = [replace(s, host_memory=s.host_memory or 4 * s.memory) for s in specs]
    else:
        specs = [replace(s, host_memory=0) for s in specs]
    config, models = fleet_config(trace, specs, policy, poll_interval, timeout)
    sizes = dict(zip(trace.models, trace.sizes, strict=True))
    neurons = SimNeurons(specs, sizes, speeds, policy.keep_alive)
    metrics = GatewayMetrics()
    fleet: SimFleet
    if policy.random:
        fleet = RandomFleet(config, models, metrics, neurons, seed=seed)
    else:
        fleet = SimFleet(config, models, metrics, neurons)  # type: ignore[arg-type]
    neurons.on_gone = fleet.poke  # as the proxy does when a neuron says it has no such model
    result = Result(policy.name, requests=len(trace))
    started = time.perf_counter()
    await fleet.start()
    the_loop = asyncio.get_running_loop()
    begin = the_loop.time()
    times = trace.t.tolist()
    model_of = [trace.models[m] for m in trace.model.tolist()]
    prompts = trace.prompt_tokens.tolist()
    outputs = trace.output_tokens.tolist()
    in_flight = fleet.in_flight
    left = len(times)
    finished = the_loop.create_future()
    cold_tasks: set[asyncio.Task[None]] = set()

    def done() -> None:
        nonlocal left
        left -= 1
        if left == 0 and not finished.done():
            finished.set_result(None)

    def dispatch(i: int, node: str, model: str, arrived: float) -> None:
        def start() -> None:
            result.queue_waits.append(the_loop.time() - arrived)
            seconds = neurons.nodes[node].decode_seconds(sizes[model], prompts[i], outputs[i])
            the_loop.call_later(seconds, end)

        def end() -> None:
            neurons.finished(node, model)
            in_flight.release(node, model)
            result.served += 1
            done()

        neurons.serve(node, model, start)

    async def cold(i: int, model: str, arrived: float) -> None:
        try:
            node = await asyncio.wait_for(ensure(model), timeout)
        except TimeoutError:
            result.timed_out += 1
            done()
            return
        except CortexError:
            result.refused += 1
            done()
            return
        result.cold_waits.append(the_loop.time() - arrived)
        dispatch(i, node, model, arrived)

    async def ensure(model: str) -> str:
        while True:
            node = await fleet.ensure(model)
            if neurons.holds(node, model):
                return node
            await asyncio.sleep(0.001)  # the poke's fresh reading is on its way

    def arrive(i: int) -> None:
        model = model_of[i]
        arrived = the_loop.time()
        node = pick_ready(fleet.snapshot, model, in_flight.busy)
        if node is not None and not neurons.holds(node, model):
            node = None  # gone on its own, and the gateway is hearing of it: a cold start
        if node is not None:
            in_flight.acquire(node, model)
            dispatch(i, node, model, arrived)
        else:
            task = the_loop.create_task(cold(i, model, arrived))
            cold_tasks.add(task)
            task.add_done_callback(cold_tasks.discard)
        if i + 1 < len(times):
            the_loop.call_at(begin + times[i + 1], arrive, i + 1)

    def sample() -> None:
        total = sum(s.memory for s in specs)
        used = sum(n.used for n in neurons.nodes.values())
        result.memory_samples.append(used / total if total else 0.0)
        if not finished.done():
            the_loop.call_later(SAMPLE_EVERY, sample)

    if times:
        the_loop.call_at(begin + times[0], arrive, 0)
        the_loop.call_soon(sample)
        await finished
    result.simulated_seconds = the_loop.time() - begin
    await fleet.aclose()
    result.replica_loads = fleet.replicas
    result.cold_loads = neurons.counters.loads - fleet.replicas
    result.wakes = neurons.counters.wakes
    for (_, _, reason), value in metrics.evictions.children.items():
        result.evictions[reason] = result.evictions.get(reason, 0) + int(value.value)
    if neurons.counters.expired:
        result.evictions["keep_alive"] = neurons.counters.expired
    result.wall_seconds = time.perf_counter() - started
    return result


def run(trace: Trace, specs: list[NodeSpec], policy: Policy, **options: Any) -> Result:
    return loop.run(simulate(trace, specs, policy, **options))


def fleet_of(kind: str, nodes: int, seed: int = 0) -> list[NodeSpec]:
    """``mixed``: nodes of 24, 48, 80 and 192 GB in turn (consumer cards to an H200), each
    with its own storage bandwidth; ``homelab``: three machines of 24, 48 and 80 GB."""
    rng = random.Random(seed)
    classes = [  # memory GB, memory bandwidth GB/s
        (24, 1000.0),
        (48, 864.0),
        (80, 2000.0),
        (192, 4800.0),
    ]
    if kind == "homelab":
        chosen = classes[:3]
        nodes = 3
    else:
        chosen = [classes[i % len(classes)] for i in range(nodes)]
    specs = []
    for i, (memory, hbm) in enumerate(chosen[:nodes]):
        bandwidth = rng.choice((1.0, 2.0, 3.0, 6.0)) * GB  # network storage to fast NVMe
        specs.append(NodeSpec(f"node-{i:03d}", int(memory * GB), bandwidth, hbm * GB))
    return specs
