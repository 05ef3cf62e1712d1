"""Which models to evict from a node to make room: a pure function of a snapshot.

Never a pinned model, never one with requests in flight (the gateway's own count or
the neuron's), never one that is not READY (so never one already being evicted). The
neuron's figures are as old as its last reading: when the gateway released a request
on that model after the reading was taken, they still count that request, so they are
not trusted until the next reading.
``lru`` takes the least recently used first; ``priority`` the lowest priority first,
then lru; ``gdsf`` the lowest recent requests × cost of loading it again, per byte it holds
(a GreedyDual-Size-Frequency order, where a model's requests decay with a half-life instead
of the classic running inflation; ties by lru). The cost is the load's seconds where the
node's start-up and speed are known (``state.reload_seconds``): small models load mostly in
start-up, so a big one is not always the first to go; else 1, the classic GDSF.

``victims_cost`` says what evicting a set of victims loses, in the strategy's own measure, so
that best-fit placement can take room where it costs least across the fleet: for ``gdsf``
in seconds of loading the victims are expected to cost again.
"""

from __future__ import annotations

from cortex.gateway import clock
from cortex.gateway.state import (
    Busy,
    LastUsed,
    ModelState,
    Snapshot,
    Uses,
    frequency,
    reload_seconds,
)
from cortex.protocol.lifecycle import ModelRecord


def is_evictable(
    snapshot: Snapshot, node: str, record: ModelRecord, busy: Busy, recent: LastUsed | None = None
) -> bool:
    key = (node, record.id)
    seen = snapshot.nodes[node].last_seen or 0.0
    neuron_busy = record.in_flight > 0 or record.queued > 0
    stale = recent is not None and recent.get(key, 0.0) >= seen
    return (
        snapshot.state(node, record.id) is ModelState.READY
        and not snapshot.is_pinned(record.id)
        and busy.get(key, 0) == 0
        and not (neuron_busy and not stale)
    )


def last_used(record: ModelRecord, node: str, recent: LastUsed | None) -> float:
    """When ``record`` last served: the neuron's word or the gateway's, the fresher."""
    neuron = record.last_used_at or record.loaded_at or 0.0
    return max(neuron, (recent or {}).get((node, record.id), 0.0))


def eviction_order(
    snapshot: Snapshot,
    node: str,
    busy: Busy,
    recent: LastUsed | None = None,
    uses: Uses | None = None,
) -> list[ModelRecord]:
    """Evictable models on ``node``, first victim first.

    ``recent`` holds the gateway's own last-use stamps, fresher than the neuron's figures
    in the snapshot (which are as old as the last poll); ``uses`` its decayed request
    counts (``gdsf``).
    """
    records = snapshot.nodes[node].records
    candidates = [r for r in records if is_evictable(snapshot, node, r, busy, recent)]
    if snapshot.strategy == "priority":
        candidates.sort(key=lambda r: (snapshot.priority(r.id), last_used(r, node, recent), r.id))
    elif snapshot.strategy == "gdsf":
        now = clock.wall()

        timed = node in snapshot.load_start  # its start-up and speed known: cost in seconds

        def per_byte(r: ModelRecord) -> float:
            cost = reload_seconds(snapshot, node, r.memory_bytes) if timed else 1.0
            return frequency(uses, node, r.id, now) * cost / max(r.memory_bytes, 1)

        candidates.sort(key=lambda r: (per_byte(r), last_used(r, node, recent), r.id))
    else:
        candidates.sort(key=lambda r: (last_used(r, node, recent), r.id))
    return candidates


def evictable_bytes(
    snapshot: Snapshot,
    node: str,
    busy: Busy,
    recent: LastUsed | None = None,
    uses: Uses | None = None,
) -> int:
    return sum(r.memory_bytes for r in eviction_order(snapshot, node, busy, recent, uses))


def choose_victims(
    snapshot: Snapshot,
    node: str,
    shortfall: int,
    busy: Busy,
    recent: LastUsed | None = None,
    uses: Uses | None = None,
) -> tuple[str, ...] | None:
    """The fewest models, in eviction order, that free ``shortfall`` bytes; None if impossible."""
    victims: list[str] = []
    freed = 0
    for record in eviction_order(snapshot, node, busy, recent, uses):
        if freed >= shortfall:
            break
        victims.append(record.id)
        freed += record.memory_bytes
    return tuple(victims) if freed >= shortfall else None


def victims_cost(
    snapshot: Snapshot,
    node: str,
    victims: tuple[str, ...],
    recent: LastUsed | None = None,
    uses: Uses | None = None,
) -> tuple[float, ...]:
    """What evicting ``victims`` from ``node`` loses, lower is cheaper: for ``gdsf`` the
    requests they drew lately; for ``priority`` their highest priority, then how recently
    the latest of them was used; for ``lru`` that last (so the fleet evicts its least
    recently used models first, wherever they are)."""
    records = [r for r in snapshot.nodes[node].records if r.id in victims]
    latest = max((last_used(r, node, recent) for r in records), default=0.0)
    if snapshot.strategy == "gdsf":
        now = clock.wall()
        lost = sum(
            frequency(uses, node, r.id, now) * reload_seconds(snapshot, node, r.memory_bytes)
            for r in records
        )
        return (lost, latest)
    if snapshot.strategy == "priority":
        return (max((snapshot.priority(r.id) for r in records), default=0), latest)
    return (latest,)
