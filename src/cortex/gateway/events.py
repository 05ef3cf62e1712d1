"""The fleet's lifecycle as events: what changed between two snapshots, and the bus that keeps
the last ones and hands them to every listener (``GET /fleet/events``, ``cortex events``).

``changes`` is pure: the fleet owner calls ``FleetEvents.observe`` with the snapshot before and
after each of its transitions, so every change is seen once, in order, whoever caused it (this
gateway, a poll that found a neuron's own load, a node that went away). The kinds:

* ``node_up`` / ``node_down`` (with the error that took it down);
* ``loading`` (where, and the models it evicts to make room), ``loaded``, ``load_failed`` (with
  the neuron's reason), ``waking``;
* ``evicting`` (a model unloaded to make room for another: the reason names it), ``unloaded``
  (a model gone from a node), ``sleeping``;
* ``progress``: a step of a load in flight, with its ``stage`` (the fleet owner's own, and
  what the neuron reports as it loads).

Everything runs on the event loop, as the fleet owner does. A listener too slow to take its
events is dropped rather than let its queue grow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cortex import sse
from cortex.gateway.state import ModelState, NodeState, Snapshot
from cortex.protocol.fleet import FleetProgress

__all__ = ["FleetEvent", "FleetEvents", "changes"]

BACKLOG = 200  # events kept for a listener that connects later
QUEUE = 1000  # events a listener may fall behind before it is dropped


@dataclass(frozen=True, slots=True)
class FleetEvent:
    kind: str
    message: str
    node: str | None = None
    model: str | None = None
    at: float = field(default_factory=time.time)
    seq: int = 0
    stage: str | None = None  # progress events: the load's stage

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def changes(before: Snapshot, after: Snapshot) -> list[FleetEvent]:
    """What changed from ``before`` to ``after``, node by node in cortex.toml order."""
    found: list[FleetEvent] = []
    for name, node in after.nodes.items():
        old = before.nodes.get(name)
        if old is None or node is old or (node.up == old.up and node.states == old.states):
            continue  # nothing to tell (most transitions touch one node of many)
        if node.up != old.up:
            if node.up:
                found.append(FleetEvent("node_up", f"{name} is up", node=name))
            else:
                why = f": {node.error}" if node.error else ""
                found.append(FleetEvent("node_down", f"{name} is down{why}", node=name))
        for model in [*old.states, *(m for m in node.states if m not in old.states)]:
            event = _model_change(after, node, model, old.states.get(model), node.states.get(model))
            if event is not None:
                found.append(event)
    return found


def _model_change(
    after: Snapshot, node: NodeState, model: str, was: ModelState | None, now: ModelState | None
) -> FleetEvent | None:
    if was == now:
        return None
    name = node.name
    if now is ModelState.LOADING:
        load = after.pending.get(model)
        if load is not None and load.wake:
            return FleetEvent("waking", f"waking {model} on {name}", name, model)
        evicting = f", evicting {', '.join(load.victims)}" if load and load.victims else ""
        return FleetEvent("loading", f"loading {model} on {name}{evicting}", name, model)
    if now is ModelState.READY:
        return FleetEvent("loaded", f"{model} is ready on {name}", name, model)
    if now is ModelState.FAILED:
        why = _error(node, model)
        return FleetEvent("load_failed", f"{model} failed on {name}: {why}", name, model)
    if now is ModelState.SLEEPING:
        return FleetEvent("sleeping", f"{model} sleeps on {name} (host memory)", name, model)
    if now is ModelState.UNLOADING:
        for load in after.pending.values():
            if load.node == name and model in load.victims:
                why = f"evicted ({after.strategy}) to make room for {load.model}"
                return FleetEvent("evicting", f"{model} on {name}: {why}", name, model)
        return FleetEvent("unloading", f"unloading {model} from {name}", name, model)
    if now is None:
        return FleetEvent("unloaded", f"{model} is no longer on {name}", name, model)
    return None


def _error(node: NodeState, model: str) -> str:
    status = node.status
    for record in status.models if status is not None else ():
        if record.id == model and record.error:
            return record.error
    return "the neuron gave no reason"


class FleetEvents:
    """The last ``BACKLOG`` events and the listeners waiting for more."""

    def __init__(self) -> None:
        self._backlog: deque[FleetEvent] = deque(maxlen=BACKLOG)
        self._listeners: set[asyncio.Queue[FleetEvent]] = set()
        self._seq = 0

    def observe(self, before: Snapshot, after: Snapshot) -> None:
        for event in changes(before, after):
            self.publish(event)

    def progress(self, progress: FleetProgress) -> None:
        """A step of a load in flight (the neuron resolving, checking, loading; an eviction on
        its way), as a ``progress`` event with its ``stage``. Placing is left out: the
        ``loading`` event already says it."""
        if progress.stage != "placing":
            message = f"{progress.model} on {progress.node}: {progress.message}"
            node, model, stage = progress.node, progress.model, progress.stage
            self.publish(FleetEvent("progress", message, node, model, stage=stage))

    def publish(self, event: FleetEvent) -> None:
        self._seq += 1
        event = replace(event, seq=self._seq)
        self._backlog.append(event)
        for queue in list(self._listeners):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._listeners.discard(queue)  # too slow: it ends, and may connect again

    @property
    def backlog(self) -> list[FleetEvent]:
        return list(self._backlog)

    async def stream(self, *, follow: bool = True) -> AsyncIterator[bytes]:
        """SSE: the backlog, then (``follow``) each event as it comes (``event:`` its kind),
        until the listener leaves or falls ``QUEUE`` events behind."""
        queue: asyncio.Queue[FleetEvent] = asyncio.Queue(QUEUE)
        backlog = list(self._backlog)
        self._listeners.add(queue)
        try:
            for event in backlog:
                yield sse.encode(event.as_dict(), event.kind)
            if not follow:
                return
            while queue in self._listeners or not queue.empty():
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    yield sse.comment("keep-alive")  # proxies close idle streams
                    continue
                yield sse.encode(event.as_dict(), event.kind)
        finally:
            self._listeners.discard(queue)
