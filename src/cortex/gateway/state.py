"""The fleet as data: an immutable ``Snapshot`` of nodes, models and loads in flight.

The fleet's owner task is the only writer; it publishes a new snapshot after every
change. Everyone else (the router, the evictor, the catalogue, ``/fleet``) reads the
current one and never mutates it, so the policies are pure functions of a snapshot.

Each model on each node has one ``ModelState``, decided by the owner (``settle``) from
the neuron's last word and the owner's own loads and unloads in flight; readers ask
``Snapshot.state``/``ready_on`` and never work it out from the parts.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fnmatch import fnmatchcase

from cortex.config import ModelProfile, ModelsConfig
from cortex.protocol.lifecycle import AvailableModel, ModelRecord, ModelType, NodeStatus

# Requests the gateway itself has in flight, by (node, model) (see ``inflight``).
Busy = Mapping[tuple[str, str], int]
# When the gateway last finished a request, by (node, model) (time.time()).
LastUsed = Mapping[tuple[str, str], float]

# Requests per (node, model) as a count that halves every HALF_LIFE seconds, with the wall
# time it was last brought up to date: (count, when). ``frequency`` reads it at a moment.
Uses = Mapping[tuple[str, str], tuple[float, float]]
HALF_LIFE = 3600.0
DECAY = math.log(2) / HALF_LIFE  # per second


def frequency(uses: Uses | None, node: str, model: str, now: float) -> float:
    """``model``'s decayed request count on ``node`` as of ``now``."""
    count, at = (uses or {}).get((node, model), (0.0, now))
    return count * math.exp(-max(0.0, now - at) * DECAY)


class ModelState(StrEnum):
    """One model on one node, as the gateway sees it; no entry means it is not there.

    ::

        (none) --load--> LOADING --ready--> READY --evict / unload--> UNLOADING --over--> (none)
                          |   ^               |
                   failed |   | load again    | unloaded by someone else
                          v   |               v
                         FAILED             LEAVING --gone--> (none)

    The owner's own operations hold their state against polls until they report back:
    UNLOADING until the unload (or the load it made room for) is done, LOADING until the
    neuron says ready or the load is done. Otherwise a model is what the neuron says,
    including loads and unloads the gateway did not start (a preload, another client):
    the whole machine, with those, is drawn in ``docs/fleet.md``.
    """

    LOADING = "loading"
    READY = "ready"
    # Its weights parked in the node's host memory (vLLM's sleep mode): it holds no device
    # memory; a request for it wakes it, as a load placed there (``router.plan``).
    SLEEPING = "sleeping"
    UNLOADING = "unloading"  # this gateway is unloading it (an eviction, an operator)
    LEAVING = "leaving"  # the neuron is unloading it, but not at this gateway's request
    FAILED = "failed"  # the neuron kept the failed load's record


_REPORTED: dict[str, ModelState] = {
    "loading": ModelState.LOADING,
    "ready": ModelState.READY,
    "sleeping": ModelState.SLEEPING,
    "unloading": ModelState.LEAVING,
    "failed": ModelState.FAILED,
}


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    endpoint: str
    token: str | None = None
    up: bool = False
    last_seen: float | None = None
    error: str | None = None
    status: NodeStatus | None = None
    available: tuple[AvailableModel, ...] = ()
    eviction_cycles: int = 0
    failures: int = 0
    # When the reading behind ``status``/``up`` was taken (monotonic): an older reading
    # that arrives later (a slow poll overtaken by a load's fresh status) is ignored.
    status_at: float = 0.0
    states: Mapping[str, ModelState] = field(default_factory=dict)  # by model id; see ``settle``

    @property
    def records(self) -> list[ModelRecord]:
        return self.status.models if self.status is not None else []

    def record(self, model: str) -> ModelRecord | None:
        for record in self.records:
            if record.id == model:
                return record
        return None

    def state(self, model: str) -> ModelState | None:
        return self.states.get(model)

    def free_bytes(self) -> int:
        """Room for one more model: the device with the most room (one model, one device)."""
        if self.status is None or not self.status.devices:
            return 0
        best = 0
        for device in self.status.devices:
            budget = (
                device.memory_budget if device.memory_budget is not None else device.memory_total
            )
            room = min(budget - device.memory_used_by_models, device.memory_free)
            best = max(best, room)
        return max(0, best)

    def has_local(self, model: str) -> bool:
        return any(item.id == model for item in self.available)

    def local_size(self, model: str) -> int | None:
        for item in self.available:
            if item.id == model:
                return item.size_bytes
        return None


def settle(
    node: NodeState, loading: Collection[str] = (), unloading: Collection[str] = ()
) -> NodeState:
    """``node`` with the state of each of its models decided (only the owner calls this).

    ``loading`` and ``unloading`` name the models the owner is loading onto / unloading
    from this node right now. Its unloads win over anything the neuron says; its loads
    show as LOADING until the neuron reports the model ready; the rest is the neuron's word.
    """
    states = {record.id: _REPORTED[record.state] for record in node.records}
    for model in loading:
        if states.get(model) is not ModelState.READY:
            states[model] = ModelState.LOADING
    for model in unloading:
        states[model] = ModelState.UNLOADING
    return replace(node, states=states)


@dataclass(frozen=True, slots=True)
class PendingLoad:
    model: str
    node: str
    needed: int
    victims: tuple[str, ...]
    started_at: float
    wake: bool = False  # it sleeps on that node: wake it rather than load it


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: Mapping[str, NodeState]  # in cortex.toml order
    models: ModelsConfig
    strategy: str = "lru"  # eviction: lru, priority, gdsf
    placement: str = "first-fit"  # or best-fit
    pending: Mapping[str, PendingLoad] = field(default_factory=dict)  # loads in flight, by model
    pins: Mapping[str, bool] = field(default_factory=dict)  # runtime overrides (/fleet/pin)
    # Bytes a model needs on a node, learnt from a neuron's 507 answer.
    learnt_sizes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # How long loads take per node, learnt from the loads the gateway timed (moving
    # averages): where the neuron reports its read speed (``NodeStatus.load_speed``), the
    # seconds a load takes beyond its bytes at that speed (start-up); where it does not,
    # bytes per second over the whole load.
    load_start: Mapping[str, float] = field(default_factory=dict)
    load_speed: Mapping[str, float] = field(default_factory=dict)
    version: int = 0
    # ``ready_on``'s answers, worked out once per snapshot (a snapshot never changes; a
    # replaced one starts empty): the hot path asks it for every request.
    _ready: dict[str, tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _types: dict[str, ModelType] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def profile(self, model: str) -> ModelProfile | None:
        return self.models.profile(model)

    def resolve(self, name: str) -> str:
        """A client's model name → the model id: an exact alias, else the first pattern
        alias that matches (``"claude-*" = "qwen3-coder"``), else the name itself."""
        aliases = self.models.aliases
        exact = aliases.get(name)
        if exact is not None:
            return exact
        if self.is_known(name):
            return name
        for pattern, target in aliases.items():
            if "*" in pattern and fnmatchcase(name, pattern):
                return target
        return name

    def is_pinned(self, model: str) -> bool:
        if model in self.pins:
            return self.pins[model]
        profile = self.profile(model)
        return profile is not None and profile.pinned

    def priority(self, model: str) -> int:
        profile = self.profile(model)
        return profile.priority if profile is not None else 0

    def allowed_nodes(self, model: str) -> list[str]:
        """Where ``model`` may be placed, in order of preference."""
        profile = self.profile(model)
        if profile is not None:
            return [n for n in (profile.neurons or list(self.nodes)) if n in self.nodes]
        # Without a profile, a model can go where a neuron has it on disk.
        return [n for n, node in self.nodes.items() if node.has_local(model)]

    def is_known(self, model: str) -> bool:
        if self.profile(model) is not None:
            return True
        return any(
            node.record(model) is not None or node.has_local(model) for node in self.nodes.values()
        )

    def state(self, node: str, model: str) -> ModelState | None:
        return self.nodes[node].states.get(model)

    def model_type(self, model: str) -> ModelType:
        """What ``model`` serves: as its profile says, else as a neuron reports it (a
        record, else a model on its disk), else ``chat``. Worked out once per snapshot."""
        known = self._types.get(model)
        if known is None:
            known = self._types[model] = self._find_type(model)
        return known

    def _find_type(self, model: str) -> ModelType:
        profile = self.profile(model)
        if profile is not None and profile.type is not None:
            return profile.type
        for node in self.nodes.values():
            record = node.record(model)
            if record is not None:
                return record.type
        for node in self.nodes.values():
            for item in node.available:
                if item.id == model:
                    return item.type
        return "chat"

    def ready_on(self, model: str) -> list[str]:
        """Up nodes where ``model`` is READY (so not being evicted)."""
        ready = self._ready.get(model)
        if ready is None:
            ready = self._ready[model] = tuple(
                name
                for name, node in self.nodes.items()
                if node.up and node.states.get(model) is ModelState.READY
            )
        return list(ready)


def reported_speed(snapshot: Snapshot, node: str) -> float | None:
    """The read speed ``node``'s neuron reports (bytes/s), if it does."""
    status = snapshot.nodes[node].status
    speed = status.load_speed if status is not None else None
    return speed if speed else None


def node_speed(snapshot: Snapshot, node: str) -> float | None:
    """Bytes per second ``node`` loads at: as its neuron reports, else as learnt."""
    return reported_speed(snapshot, node) or snapshot.load_speed.get(node)


DEFAULT_LOAD_SPEED = 1e9  # bytes/s assumed of a node before any load there was timed


def reload_seconds(snapshot: Snapshot, node: str, nbytes: int) -> float:
    """How long loading ``nbytes`` again on ``node`` should take (its start-up, then the
    bytes at its speed, else at ``DEFAULT_LOAD_SPEED``)."""
    speed = node_speed(snapshot, node) or DEFAULT_LOAD_SPEED
    return snapshot.load_start.get(node, 0.0) + nbytes / speed


def learn_speed(snapshot: Snapshot, load: PendingLoad, seconds: float) -> Snapshot:
    """``snapshot`` knowing how long ``load`` took on its node (loads from storage only):
    its start-up where the neuron reports a read speed, else its bytes per second."""
    if load.wake or load.needed <= 0 or seconds <= 0:
        return snapshot
    reported = reported_speed(snapshot, load.node)
    if reported is not None:
        start = max(0.0, seconds - load.needed / reported)
        old = snapshot.load_start.get(load.node)
        start = start if old is None else (old + start) / 2
        return replace(snapshot, load_start={**snapshot.load_start, load.node: start})
    measured = load.needed / seconds
    old = snapshot.load_speed.get(load.node)
    speed = measured if old is None else (old + measured) / 2
    return replace(snapshot, load_speed={**snapshot.load_speed, load.node: speed})
