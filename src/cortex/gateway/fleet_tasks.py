"""The I/O the fleet's owner starts: loads (with their evictions), operator unloads, defrags.

Each runs as a task of its own and reports back by posting messages to the owner's inbox:
``Progress`` as a load goes, then ``LoadDone``/``UnloadDone`` with a fresh reading of the
node, so the owner never awaits while it decides. What a task needs comes in its message
or from the public snapshot; it never reads the owner's own bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cortex.errors import CortexError, NeuronUnavailable
from cortex.gateway import clock
from cortex.gateway.inbox import LoadDone, Message, Progress, Reading, Unload, UnloadDone
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.poller import read
from cortex.gateway.state import NodeState, PendingLoad, Snapshot
from cortex.protocol.fleet import FleetProgress
from cortex.protocol.lifecycle import LoadProgress

log = logging.getLogger(__name__)


class FleetTasks:
    def __init__(
        self,
        client: NeuronClient,
        metrics: GatewayMetrics,
        snapshot: Callable[[], Snapshot],
        post: Callable[[Message], None],
    ) -> None:
        self.client = client
        self.metrics = metrics
        self._snapshot = snapshot
        self._post = post

    async def load(self, load: PendingLoad) -> None:
        started = clock.monotonic()
        node = self._snapshot().nodes[load.node]
        error: CortexError | None = None
        try:
            for victim in load.victims:
                if can_sleep(node, victim):
                    message = f"putting {victim} to sleep on {node.name}"
                    self._progress(load.model, node.name, "evicting", message)
                    await self.client.sleep(node, victim)
                else:
                    message = f"unloading {victim} from {node.name}"
                    self._progress(load.model, node.name, "evicting", message)
                    await self.client.unload(node, victim)
                reason = self._snapshot().strategy
                self.metrics.evictions.value(victim, node.name, reason).inc()
            profile = self._snapshot().profile(load.model)
            source = profile.load_source if profile is not None else load.model
            options = profile.load_options() if profile is not None else {}
            relay = self._relay(load.model, node.name)
            if load.wake:
                self._progress(load.model, node.name, "loading", f"waking it on {node.name}")
                await self.client.wake(node, load.model)
            else:
                await self.client.load(node, load.model, source, relay, options=options)
        except CortexError as exc:
            error = exc
        except Exception as exc:  # a bug must not leave the load's waiters hanging
            log.exception("loading %s on %s failed", load.model, node.name)
            error = NeuronUnavailable(f"Loading {load.model!r} on {node.name} failed: {exc!r}")
        reading = await read(self.client, node)
        self._post(LoadDone(load, reading, error, clock.monotonic() - started))

    async def unload(self, message: Unload, targets: list[str]) -> None:
        readings: dict[str, Reading] = {}
        errors: list[CortexError] = []
        for name in targets:
            node = self._snapshot().nodes[name]
            try:
                await self.client.unload(node, message.model, force=message.force)
                self.metrics.evictions.value(message.model, name, "operator").inc()
            except CortexError as exc:
                errors.append(exc)
            readings[name] = await read(self.client, node)
        self._post(UnloadDone(message.model, readings))
        if errors and not message.future.done():
            message.future.set_exception(errors[0])
        elif not message.future.done():
            message.future.set_result(targets)

    async def defrag(self, node: NodeState) -> None:
        try:
            freed = await self.client.defrag(node)
            log.info("defragmented %s: %d bytes freed", node.name, freed)
        except CortexError as exc:
            log.warning("defrag of %s failed: %s", node.name, exc.message)

    def _progress(
        self, model: str, node: str, stage: str, message: str, needed: int | None = None
    ) -> None:
        event = FleetProgress(
            model=model, node=node, stage=stage, message=message, needed_bytes=needed
        )
        self._post(Progress(event))

    def _relay(self, model: str, node: str) -> Callable[[LoadProgress], None]:
        def relay(progress: LoadProgress) -> None:
            self._progress(model, node, progress.stage, progress.message, progress.needed_bytes)

        return relay


def can_sleep(node: NodeState, model: str) -> bool:
    """Whether evicting ``model`` may put it to sleep rather than unload it: its engine can,
    and the node's host memory has room for its weights."""
    record = node.record(model)
    status = node.status
    if record is None or not record.can_sleep or status is None:
        return False
    host_free = status.host_memory_free
    weights = record.memory_bytes - record.kv_cache_bytes
    return host_free is not None and weights <= host_free
