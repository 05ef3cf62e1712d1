"""Where a request goes, and where a model should be loaded: pure functions.

``pick_ready`` is the hot path: the least busy up node where the model is ready.
``plan`` decides a placement for a model that is ready nowhere. ``first-fit`` (the
snapshot's ``placement``): the first allowed node (profile order) where it fits, counting
loads already in flight; else the first where evicting idle, unpinned models makes room.
``best-fit``: of the nodes where it fits, the one where it is ready soonest (the node's
measured load speed), then the tightest fit; else the node whose victims cost least
(``evictor.victims_cost``), then the soonest ready. Else a reason it cannot be placed.
The owner asks ``plan`` only about a model it is not loading already, so a model
LOADING on a node is a load someone else started there (a preload), which it joins.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cortex.config import PlacementSection
from cortex.errors import CortexError, ModelNotFound, NeuronUnavailable, NoCapacity
from cortex.gateway.evictor import choose_victims, evictable_bytes, victims_cost
from cortex.gateway.state import (
    DEFAULT_LOAD_SPEED,
    Busy,
    LastUsed,
    ModelState,
    Snapshot,
    Uses,
    node_speed,
)


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    needed: int
    victims: tuple[str, ...] = ()
    wake: bool = False  # it sleeps there: a wake, not a load


@dataclass(frozen=True, slots=True)
class Unplaceable:
    error: CortexError


def pick_ready(
    snapshot: Snapshot, model: str, busy: Busy, exclude: str | None = None
) -> str | None:
    best: str | None = None
    best_load = 0
    for name in snapshot.ready_on(model):
        if name == exclude:
            continue
        record = snapshot.nodes[name].record(model)
        load = busy.get((name, model), 0) + (record.queued if record is not None else 0)
        if best is None or load < best_load:
            best, best_load = name, load
    return best


def needed_bytes(snapshot: Snapshot, model: str, node: str) -> int:
    """Best estimate of what ``model`` takes on ``node``; 0 when unknown (the neuron checks)."""
    learnt = snapshot.learnt_sizes.get((node, model))
    if learnt is not None:
        return learnt
    profile = snapshot.profile(model)
    if profile is not None and profile.memory is not None:
        return profile.memory
    return snapshot.nodes[node].local_size(model) or 0


def free_bytes(snapshot: Snapshot, node: str) -> int:
    """Room on ``node`` after the loads the gateway has in flight there."""
    reserved = sum(p.needed for p in snapshot.pending.values() if p.node == node)
    return snapshot.nodes[node].free_bytes() - reserved


def typical_load_speed(snapshot: Snapshot) -> float:
    """What a node of unknown speed is assumed to load at: the fleet's median known
    speed, else ``DEFAULT_LOAD_SPEED``."""
    known = sorted(s for s in (node_speed(snapshot, n) for n in snapshot.nodes) if s)
    return known[len(known) // 2] if known else DEFAULT_LOAD_SPEED


def load_seconds(snapshot: Snapshot, node: str, size: int, typical: float) -> float:
    """How long ``node`` should take to have ``size`` more bytes loaded, after the loads
    already in flight there: each one's start-up (where learnt) and all their bytes at the
    node's speed (else ``typical``)."""
    speed = node_speed(snapshot, node) or typical
    start = snapshot.load_start.get(node, 0.0)
    queued = [p.needed for p in snapshot.pending.values() if p.node == node]
    return (len(queued) + 1) * start + (sum(queued) + size) / speed


def plan(
    snapshot: Snapshot,
    model: str,
    busy: Busy,
    only: str | None = None,
    recent: LastUsed | None = None,
    exclude: Collection[str] = (),
    uses: Uses | None = None,
) -> Placement | Unplaceable:
    """Where to load ``model`` (see the module doc); never on a node in ``exclude`` (ones
    where this load already failed). ``uses``: the gateway's request counts (``gdsf``)."""
    if not snapshot.is_known(model):
        return Unplaceable(ModelNotFound(f"The model {model!r} does not exist", param="model"))
    allowed = snapshot.allowed_nodes(model)
    if only is not None:
        if only not in snapshot.nodes:
            return Unplaceable(ModelNotFound(f"There is no node named {only!r}", param="node"))
        if only not in allowed:
            return Unplaceable(
                NeuronUnavailable(f"The model {model!r} may not be placed on node {only!r}")
            )
        allowed = [only]
    allowed = [n for n in allowed if n not in exclude]
    unloading = ModelState.UNLOADING  # not where this gateway is taking it away right now
    up = [n for n in allowed if snapshot.nodes[n].up and snapshot.state(n, model) is not unloading]
    if not allowed:
        return Unplaceable(NeuronUnavailable(f"No node may hold the model {model!r}"))
    if not up:
        names = ", ".join(allowed)
        return Unplaceable(
            NeuronUnavailable(f"Every node that may hold {model!r} is down ({names})")
        )
    for node in up:
        if snapshot.state(node, model) is ModelState.LOADING:
            return Placement(node, 0)  # already loading there (a preload): join it
    for node in up:  # a copy asleep in a node's host memory wakes faster than any load
        if snapshot.state(node, model) is ModelState.SLEEPING:
            record = snapshot.nodes[node].record(model)
            needed = record.memory_bytes if record is not None else 0
            shortfall = needed - free_bytes(snapshot, node)
            victims = (
                ()
                if shortfall <= 0
                else choose_victims(snapshot, node, shortfall, busy, recent, uses)
            )
            if victims is not None:
                return Placement(node, needed, victims, wake=True)
    if snapshot.placement == "best-fit":
        best = _best_fit(snapshot, model, up, busy, recent, uses)
        if best is not None:
            return best
    else:
        for node in up:
            if needed_bytes(snapshot, model, node) <= free_bytes(snapshot, node):
                return Placement(node, needed_bytes(snapshot, model, node))
        for node in up:
            needed = needed_bytes(snapshot, model, node)
            shortfall = needed - free_bytes(snapshot, node)
            victims = choose_victims(snapshot, node, shortfall, busy, recent, uses)
            if victims is not None:
                return Placement(node, needed, victims)
    largest = max(
        free_bytes(snapshot, n) + evictable_bytes(snapshot, n, busy, recent, uses) for n in up
    )
    needed = min(needed_bytes(snapshot, model, n) for n in up)
    return Unplaceable(
        NoCapacity(
            f"No node can fit {model!r}: it needs {needed} bytes and the most any allowed node "
            f"could free is {largest} bytes",
            extra={"needed_bytes": needed, "largest_free_bytes": largest},
        )
    )


def _best_fit(
    snapshot: Snapshot,
    model: str,
    up: list[str],
    busy: Busy,
    recent: LastUsed | None,
    uses: Uses | None,
) -> Placement | None:
    typical = typical_load_speed(snapshot)
    fits: list[tuple[float, int, int, str]] = []
    for order, node in enumerate(up):
        needed = needed_bytes(snapshot, model, node)
        room = free_bytes(snapshot, node)
        if needed <= room:
            fits.append((load_seconds(snapshot, node, needed, typical), room - needed, order, node))
    if fits:
        node = min(fits)[3]
        return Placement(node, needed_bytes(snapshot, model, node))
    options: list[tuple[tuple[float, ...], float, int, str, int, tuple[str, ...]]] = []
    for order, node in enumerate(up):
        needed = needed_bytes(snapshot, model, node)
        victims = choose_victims(
            snapshot, node, needed - free_bytes(snapshot, node), busy, recent, uses
        )
        if victims is not None:
            cost = victims_cost(snapshot, node, victims, recent, uses)
            if snapshot.strategy == "gdsf":  # both in seconds of loading: add them up
                cost = (cost[0] + load_seconds(snapshot, node, needed, typical), *cost[1:])
            options.append(
                (cost, load_seconds(snapshot, node, needed, typical), order, node, needed, victims)
            )
    if not options:
        return None
    _, _, _, node, needed, victims = min(options)
    return Placement(node, needed, victims)


def pinned_missing(
    snapshot: Snapshot, failed_at: Mapping[str, float], now: float, retry: float
) -> list[str]:
    """Pinned models ready nowhere and not loading, that an up node may hold, leaving out
    those whose last load failed less than ``retry`` seconds before ``now``."""
    pinned = {p.id for p in snapshot.models.models if p.pinned}
    pinned |= {m for m, on in snapshot.pins.items() if on}
    missing = []
    for model in sorted(pinned):
        if not snapshot.is_pinned(model) or snapshot.ready_on(model) or model in snapshot.pending:
            continue
        failed = failed_at.get(model)
        if failed is not None and now - failed < retry:
            continue
        if any(snapshot.nodes[n].up for n in snapshot.allowed_nodes(model)):
            missing.append(model)
    return missing


def replicas_wanted(snapshot: Snapshot, node: str, placement: PlacementSection) -> list[str]:
    """Models on ``node`` whose oldest queued request has waited ``replica_after`` or more,
    with fewer than ``max_replicas`` copies ready and no load of theirs in flight: each should
    get another replica elsewhere."""
    after = placement.replica_after
    if not after or not snapshot.nodes[node].up:
        return []
    return [
        record.id
        for record in snapshot.nodes[node].records
        if record.queued
        and record.queue_wait >= after
        and record.id not in snapshot.pending
        and snapshot.state(node, record.id) is ModelState.READY
        and len(snapshot.ready_on(record.id)) < placement.max_replicas
    ]
