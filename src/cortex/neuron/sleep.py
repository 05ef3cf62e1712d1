"""Sleep as a memory tier: a model whose engine can park its weights in host memory (vLLM's
sleep mode, on CUDA) gives its device memory back without unloading, and wakes in about a
second instead of loading from disk.

State machine, beside ``ModelRegistry``'s::

    ready ──sleep──▶ sleeping ──wake (or a request for it)──▶ ready

* ``sleep`` waits (bounded) for the model's requests in flight, like an unload; a request
  that comes meanwhile waits for the wake. A sleeping model's memory is not counted against
  its device (``ModelRegistry._used``).
* ``wake`` is single-flight and checks the device's budget first (507 when it no longer
  fits); ``acquire`` wakes a sleeping model, so a request for it simply waits for the wake.
* A harness that cannot sleep (the transformers engine; vLLM without CUDA) is a 400 that
  says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cortex.errors import Conflict, InsufficientMemory, InvalidRequest, ModelNotFound
from cortex.protocol.lifecycle import ModelRecord

if TYPE_CHECKING:
    from cortex.neuron.loaded import LoadedModel
    from cortex.neuron.models import ModelRegistry

log = logging.getLogger(__name__)


@runtime_checkable
class Sleeps(Protocol):
    """A harness that can park its model in host memory."""

    def sleep_refusal(self) -> str | None:
        """Why it cannot sleep here (None: it can)."""
        ...

    async def sleep(self) -> None: ...

    async def wake(self) -> None: ...


def refusal(loaded: LoadedModel) -> str | None:
    harness = loaded.harness
    if not isinstance(harness, Sleeps):
        return f"the {loaded.record.engine or 'transformers'} engine has no sleep mode"
    return harness.sleep_refusal()


class Sleeper:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self._sleeps: dict[str, asyncio.Task[None]] = {}  # draining, then parking

    def _loaded(self, model_id: str) -> LoadedModel:
        loaded = self.registry._ready.get(model_id)
        if loaded is None:
            raise ModelNotFound(f"The model {model_id!r} is not loaded on this node", param="model")
        return loaded

    async def sleep(self, model_id: str) -> ModelRecord:
        loaded = self._loaded(model_id)
        record = loaded.record
        if record.state == "sleeping":
            return loaded.snapshot()
        if record.state != "ready":
            raise Conflict(f"The model {model_id!r} is {record.state}; it can sleep once ready")
        why = refusal(loaded)
        if why is not None:
            raise InvalidRequest(f"The model {model_id!r} cannot sleep: {why}", param="model")
        record.state = "sleeping"  # new requests wait for the wake from here on
        task = asyncio.get_running_loop().create_task(self._fall_asleep(loaded))
        self._sleeps[model_id] = task
        task.add_done_callback(lambda _: self._sleeps.pop(model_id, None))
        await asyncio.shield(task)
        return loaded.snapshot()

    async def _fall_asleep(self, loaded: LoadedModel) -> None:
        record, harness = loaded.record, loaded.harness
        assert isinstance(harness, Sleeps)
        with contextlib.suppress(TimeoutError):
            timeout = self.registry.config.unload_drain_timeout
            await asyncio.wait_for(loaded.idle.wait(), timeout)
        started = time.monotonic()
        try:
            await harness.sleep()
        except BaseException:
            record.state = "ready"
            raise
        log.info("%s is asleep (%.2f s)", record.id, time.monotonic() - started)

    async def wake(self, model_id: str) -> ModelRecord:
        loaded = self._loaded(model_id)
        falling = self._sleeps.get(model_id)
        if falling is not None:
            # Asked for while it drains: it wakes once it is asleep, never before (a wake
            # first would leave it parked and called ready). A sleep that failed left it ready.
            with contextlib.suppress(Exception):
                await asyncio.shield(falling)
        if loaded.record.state == "sleeping":
            task = self._wakes.get(model_id)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._wake(loaded))
                self._wakes[model_id] = task
                task.add_done_callback(lambda _: self._wakes.pop(model_id, None))
            await asyncio.shield(task)
        return loaded.snapshot()

    async def _wake(self, loaded: LoadedModel) -> None:
        record, registry = loaded.record, self.registry
        free = registry.free_bytes(loaded.device)
        if record.memory_bytes > free:
            raise InsufficientMemory(
                f"Not enough memory to wake {record.id!r} on {loaded.device.label}: needs "
                f"{record.memory_bytes} bytes, {free} bytes free within the budget",
                extra={
                    "needed_bytes": record.memory_bytes,
                    "free_bytes": free,
                    "device": loaded.device.label,
                },
            )
        harness = loaded.harness
        assert isinstance(harness, Sleeps)
        started = time.monotonic()
        await harness.wake()
        record.state = "ready"
        duration = time.monotonic() - started
        registry.metrics.model_load_duration.labels(record.id, "wake").observe(duration)
        log.info("%s is awake (%.2f s)", record.id, duration)
