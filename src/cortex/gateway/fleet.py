"""``Fleet``: the one owner of fleet state, fed by a queue (the story: ``docs/fleet.md``).

Contracts (``docs/fleet.md`` has them at length):

* Only the owner task (``_run``) changes fleet state, one message at a time, never
  awaiting while it decides; I/O runs in tasks that report back. ``snapshot`` (each
  model's ``ModelState`` on each node) is replaced, never mutated: anyone may read it.
* ``in_flight`` counts the gateway's own requests per (node, model); only the owner reads
  it for decisions, so the evictor never picks a busy model.
* ``ensure(model)`` is single-flight: every caller for a model being loaded waits on it.
* Pinned models are loaded once their nodes are first seen and again whenever they are
  ready nowhere; a failed pinned load is retried after a back-off.
* A load that fails because its node did is placed again where it has not failed.
* A model whose requests wait at a node past ``[placement] replica_after`` gets another
  replica on another node (at most ``max_replicas``), as any load is placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from cortex.config import CortexConfig, ModelsConfig
from cortex.errors import InsufficientMemory, ModelNotFound, NeuronUnavailable, NoCapacity
from cortex.gateway import clock
from cortex.gateway.events import FleetEvents
from cortex.gateway.fleet_tasks import FleetTasks
from cortex.gateway.inbox import (
    Barrier,
    Ensure,
    Listener,
    LoadDone,
    LoadState,
    Message,
    Pin,
    Polled,
    Progress,
    Reading,
    Unload,
    UnloadDone,
    Waiter,
    apply_reading,
)
from cortex.gateway.inflight import InFlight
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.poller import Poller
from cortex.gateway.router import (
    Placement,
    Unplaceable,
    pinned_missing,
    plan,
    replicas_wanted,
)
from cortex.gateway.state import NodeState, PendingLoad, Snapshot, learn_speed, settle
from cortex.protocol.fleet import FleetProgress

log = logging.getLogger(__name__)

PIN_RETRY = 30.0
MAX_SIZE_RETRIES = 2


class Fleet:
    def __init__(
        self,
        config: CortexConfig,
        models: ModelsConfig,
        metrics: GatewayMetrics,
        client: NeuronClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        poll = config.gateway.poll_interval
        self.client = client or NeuronClient(
            poll_timeout=max(2.0, poll), load_timeout=config.gateway.load_timeout
        )
        nodes = {n.name: NodeState(n.name, n.endpoint, n.token) for n in config.neurons}
        strategy, placement = config.eviction.strategy, config.placement.strategy
        self.snapshot = Snapshot(nodes, models, strategy=strategy, placement=placement)
        self.in_flight = InFlight(count_uses=config.eviction.strategy == "gdsf")
        self.events = FleetEvents()  # the lifecycle, for GET /fleet/events
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        # The owner's own bookkeeping: only the owner task reads or writes these.
        self._loads: dict[str, LoadState] = {}  # the waiters of each load in snapshot.pending
        self._unloading: set[tuple[str, str]] = set()  # (node, model) this gateway unloads
        self._deferred: dict[str, list[Ensure]] = {}
        self._pin_failed: dict[str, float] = {}
        self._failed_on: dict[str, set[str]] = {}  # nodes where a model's load failed, by model
        self.poller = Poller(self.client, lambda: self.snapshot, self._inbox.put_nowait, poll)
        self.tasks = FleetTasks(self.client, metrics, lambda: self.snapshot, self._inbox.put_nowait)
        self._tasks: set[asyncio.Task[None]] = set()
        self._owner: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Poll every node once (so the first requests see the fleet), then run."""
        self._owner = asyncio.create_task(self._run(), name="fleet-owner")
        names = list(self.snapshot.nodes)
        await asyncio.gather(*(self.poller.poll(name, with_available=True) for name in names))
        await self._drain_inbox()
        for name in names:
            self._spawn(self.poller.run(name))

    async def aclose(self) -> None:
        tasks = [*self._tasks, *([self._owner] if self._owner else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.aclose()

    # --- API for requests and operators ------------------------------------------------

    async def ensure(
        self,
        model: str,
        node: str | None = None,
        listener: Listener | None = None,
        *,
        lease: bool = True,
    ) -> str:
        """The node where ``model`` is ready, loading it (and evicting) if needed.

        With ``lease`` the answer comes with one request counted in flight on that node
        (``in_flight.acquire``), taken at the moment the owner answers, so no eviction can
        slip in before the caller uses the model; the caller must ``in_flight.release`` it.
        """
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Ensure(model, Waiter(future, node, listener, lease)))
        try:
            return await future
        except asyncio.CancelledError:
            if lease and future.done() and not future.cancelled() and future.exception() is None:
                self.in_flight.release(future.result(), model)  # nobody will use it
            raise

    async def unload(self, model: str, node: str | None = None, force: bool = False) -> list[str]:
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Unload(model, node, force, future))
        return await future

    async def pin(self, model: str, pinned: bool) -> None:
        """Returns once the owner has applied it (and started any load it calls for)."""
        self._inbox.put_nowait(Pin(model, pinned))
        await self._drain_inbox()

    def node_failed(self, node: str, error: str) -> None:
        """The proxy could not reach ``node``: mark it down now, not at the next poll."""
        self._inbox.put_nowait(Polled(node, Reading(None, clock.monotonic(), error)))
        self.poke(node)

    def poke(self, node: str) -> None:
        self.poller.poke(node)

    # --- the owner -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                self._handle(message)
            except Exception:  # a bug in one message must not stop the fleet
                log.exception("fleet owner failed on %r", message)

    async def _drain_inbox(self) -> None:
        """Returns once every message sent before this call has been handled."""
        barrier: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Barrier(barrier))
        await barrier

    def _handle(self, message: Message) -> None:
        if isinstance(message, Ensure):
            self._on_ensure(message)
        elif isinstance(message, Polled):
            self._on_polled(message)
        elif isinstance(message, LoadDone):
            self._on_load_done(message)
        elif isinstance(message, Progress):
            self._notify(message.event)
        elif isinstance(message, Unload):
            self._on_unload(message)
        elif isinstance(message, UnloadDone):
            self._on_unload_done(message)
        elif isinstance(message, Barrier):
            message.future.set_result(None)
        else:
            self._on_pin(message)

    def _on_ensure(self, message: Ensure) -> None:
        snap, model, waiter = self.snapshot, message.model, message.waiter
        ready = snap.ready_on(model)
        target = waiter.node or (ready[0] if ready else None)
        if target is not None and target in ready:
            waiter.resolve(self.in_flight.acquire, target, model)
            return
        pending = snap.pending.get(model)
        if pending is not None:
            if waiter.node in (None, pending.node):
                self._loads[model].waiters.append(waiter)
            else:  # wanted on another node: decide once this load is over
                self._deferred.setdefault(model, []).append(message)
            return
        decision = self._plan(model, only=waiter.node)
        if isinstance(decision, Unplaceable):
            if not waiter.future.done():
                waiter.future.set_exception(decision.error)
            return
        self._loads[model] = LoadState(waiters=[waiter])
        self._start_load(model, decision)

    def _plan(self, model: str, only: str | None = None) -> Placement | Unplaceable:
        busy, recent, uses = self.in_flight.busy, self.in_flight.last_used, self.in_flight.uses
        failed = self._failed_on.get(model, ())
        return plan(self.snapshot, model, busy, only, recent, exclude=failed, uses=uses)

    def _start_load(self, model: str, placement: Placement) -> None:
        """(node, model) → LOADING, each victim → UNLOADING, until the load reports back."""
        snap, node, evicting = self.snapshot, placement.node, placement.victims
        load = PendingLoad(model, node, placement.needed, evicting, clock.wall(), placement.wake)
        self._unloading |= {(node, v) for v in evicting}
        self._publish(replace(snap, pending={**snap.pending, model: load}), node)
        victims = f", evicting {', '.join(evicting)}" if evicting else ""
        log.info("%s %s on %s%s", "waking" if load.wake else "placing", model, node, victims)
        message = f"{'waking it' if load.wake else 'placing'} on {node}{victims}"
        self._notify(FleetProgress(model=model, node=node, stage="placing", message=message))
        self._spawn(self.tasks.load(load))

    def _on_load_done(self, message: LoadDone) -> None:
        """The load's (node, model) and victims go back to what the fresh reading says."""
        load, snap = message.load, self.snapshot
        pending = {k: v for k, v in snap.pending.items() if k != load.model}
        self._unloading -= {(load.node, v) for v in load.victims}
        node = apply_reading(snap.nodes[load.node], message.reading)
        if load.victims:
            node = replace(node, eviction_cycles=node.eviction_cycles + 1)
            limit = self.config.eviction.defrag_after_cycles
            if limit and node.eviction_cycles >= limit:
                node = replace(node, eviction_cycles=0)
                self._spawn(self.tasks.defrag(node))
        nodes = {**snap.nodes, load.node: node}
        self._publish(replace(snap, nodes=nodes, pending=pending), load.node)
        self.metrics.record_node(node)
        state = self._loads.pop(load.model, LoadState())
        error = message.error
        needed = error.extra.get("needed_bytes") if isinstance(error, InsufficientMemory) else None
        if isinstance(needed, int):
            learnt = {**snap.learnt_sizes, (load.node, load.model): needed}
            self._publish(replace(self.snapshot, learnt_sizes=learnt))
            if state.size_retries < MAX_SIZE_RETRIES:
                decision = self._plan(load.model)
                if isinstance(decision, Placement):
                    state.size_retries += 1
                    self._loads[load.model] = state
                    self._start_load(load.model, decision)
                    return
                error = decision.error
            if isinstance(error, InsufficientMemory):
                error = NoCapacity(error.message, extra=error.extra)
        result = "ok" if error is None else type(error).__name__
        self.metrics.loads.value(load.model, load.node, result).inc()
        if error is None:
            kind = "wake" if load.wake else "load"
            duration = self.metrics.load_duration.distribution(load.model, load.node, kind)
            duration.observe(message.duration)
            self._publish(learn_speed(self.snapshot, load, message.duration))
            self._pin_failed.pop(load.model, None)
        elif isinstance(error, NeuronUnavailable) and self._place_again(load, state, error):
            return
        elif self.snapshot.is_pinned(load.model):
            self._pin_failed[load.model] = clock.monotonic()
        self._failed_on.pop(load.model, None)
        for waiter in state.waiters:
            if waiter.future.done():
                continue
            if error is None:
                waiter.resolve(self.in_flight.acquire, load.node, load.model)
            else:
                waiter.future.set_exception(error)
        for deferred in self._deferred.pop(load.model, []):
            self._on_ensure(deferred)

    def _place_again(self, load: PendingLoad, state: LoadState, error: NeuronUnavailable) -> bool:
        """``load``'s node failed: load it elsewhere for the waiters free to go (False: cannot)."""
        self._failed_on.setdefault(load.model, set()).add(load.node)
        movable = [w for w in state.waiters if w.node is None and not w.future.done()]
        decision = self._plan(load.model)
        if not movable or isinstance(decision, Unplaceable):
            return False
        why = error.message
        log.warning("loading %s on %s failed (%s): placing it again", load.model, load.node, why)
        for waiter in state.waiters:
            if waiter not in movable and not waiter.future.done():
                waiter.future.set_exception(error)
        self._loads[load.model] = LoadState(waiters=movable, size_retries=state.size_retries)
        self._start_load(load.model, decision)
        return True

    def _on_polled(self, message: Polled) -> None:
        snap = self.snapshot
        before = snap.nodes.get(message.node)
        if before is None:
            return
        node = apply_reading(before, message.reading)
        if not node.up and before.failures == 0:  # went down, or never came up
            log.warning("node %s is down: %s", node.name, node.error)
        elif node.up and not before.up:
            log.info("node %s is up", node.name)
        self._publish(replace(snap, nodes={**snap.nodes, node.name: node}), node.name)
        self.metrics.record_node(node)
        self._ensure_pinned()
        for model in replicas_wanted(self.snapshot, node.name, self.config.placement):
            self._add_replica(model)

    def _add_replica(self, model: str) -> None:
        """Another copy of a busy ``model``, on a node that has none (no one waits on it)."""
        busy, recent, uses = self.in_flight.busy, self.in_flight.last_used, self.in_flight.uses
        have = [*self.snapshot.ready_on(model), *self._failed_on.get(model, ())]
        decision = plan(self.snapshot, model, busy, None, recent, exclude=have, uses=uses)
        if isinstance(decision, Placement):
            self._loads[model] = LoadState()
            self._start_load(model, decision)

    def _on_unload(self, message: Unload) -> None:
        """Each target (node, model) → UNLOADING until the unload reports back."""
        snap = self.snapshot
        names = [message.node] if message.node else list(snap.nodes)
        targets = [
            n for n in names if n in snap.nodes and snap.nodes[n].record(message.model) is not None
        ]
        if not targets:
            where = f"on node {message.node!r}" if message.node else "anywhere"
            message.future.set_exception(
                ModelNotFound(f"The model {message.model!r} is not loaded {where}", param="model")
            )
            return
        self._unloading |= {(n, message.model) for n in targets}
        self._publish(snap, *targets)
        self._spawn(self.tasks.unload(message, targets))

    def _on_unload_done(self, message: UnloadDone) -> None:
        snap = self.snapshot
        nodes = dict(snap.nodes)
        for name, reading in message.readings.items():
            if reading.status is not None:
                nodes[name] = apply_reading(nodes[name], reading)
        self._unloading -= {(n, message.model) for n in message.readings}
        self._publish(replace(snap, nodes=nodes), *message.readings)

    def _on_pin(self, message: Pin) -> None:
        pins = {**self.snapshot.pins, message.model: message.pinned}
        self._publish(replace(self.snapshot, pins=pins))
        self._pin_failed.pop(message.model, None)
        self._ensure_pinned()

    def _ensure_pinned(self) -> None:
        for model in pinned_missing(self.snapshot, self._pin_failed, clock.monotonic(), PIN_RETRY):
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._on_ensure(Ensure(model, Waiter(future, None)))
            if future.done() and future.exception() is not None:
                self._pin_failed[model] = clock.monotonic()

    def _publish(self, snapshot: Snapshot, *touched: str) -> None:
        """Make ``snapshot`` the current one, the model states on ``touched`` settled anew
        (every transition names the nodes whose records or loads/unloads in flight it
        changed; ``settle`` decides their models' states from those alone), and tell the
        lifecycle's listeners what changed."""
        if touched:
            nodes = dict(snapshot.nodes)
            for name in touched:
                loading = [p.model for p in snapshot.pending.values() if p.node == name]
                unloading = [m for n, m in self._unloading if n == name]
                nodes[name] = settle(nodes[name], loading, unloading)
            snapshot = replace(snapshot, nodes=nodes)
        before, self.snapshot = self.snapshot, replace(snapshot, version=self.snapshot.version + 1)
        self.events.observe(before, self.snapshot)

    # --- helpers ---------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self, event: FleetProgress) -> None:
        """Tell the lifecycle's listeners, and the listening waiters of ``event.model``'s load
        (none once it is over)."""
        self.events.progress(event)
        state = self._loads.get(event.model)
        for waiter in state.waiters if state is not None else ():
            if waiter.listener is not None:
                waiter.listener(event)
