"""``ModelRegistry``: which models this neuron holds, and their lifecycle.

State machine per model id::

    (absent) ──load──▶ loading ──▶ ready ──unload──▶ unloading ──▶ (absent)
                          └──error──▶ failed ──load/unload──▶ …

Contracts:

* Everything here runs on the event loop; blocking work (resolving, reading weights,
  freeing memory) goes to threads. Only the event loop mutates the registry, so it
  needs no lock.
* Concurrent loads of one id join one load (single-flight); their callers all get
  the same record or the same error.
* A load is refused with ``InsufficientMemory`` (507) before any weight is read if
  the safetensors estimate does not fit the device budget, counting loads in flight.
* ``acquire()`` waits (bounded) for a model that is still loading; unload waits (bounded)
  for requests in flight, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from cortex.config import NeuronConfig
from cortex.errors import (
    Conflict,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    NeuronUnavailable,
    NotFound,
    UpstreamTimeout,
)
from cortex.neuron import engines, loader, sources
from cortex.neuron.devices import Device
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.loaded import LoadedModel, LoadInFlight, LoadSpeed, ProgressListener, load_result
from cortex.neuron.metrics import LiveFigures, NeuronMetrics
from cortex.neuron.sleep import Sleeper
from cortex.neuron.sleep import refusal as sleep_refusal
from cortex.neuron.start import start_model
from cortex.protocol.lifecycle import (
    Capabilities,
    DeviceInfo,
    LoadProgress,
    LoadRequest,
    ModelRecord,
    ModelType,
)

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(
        self, config: NeuronConfig, devices: list[Device], metrics: NeuronMetrics | None = None
    ) -> None:
        self.config = config
        self.devices = devices
        self.metrics = metrics or NeuronMetrics()
        self.places = sources.Places(tuple(config.model_dirs), tuple(config.allowed_paths))
        self._records: dict[str, ModelRecord] = {}
        self._ready: dict[str, LoadedModel] = {}
        self._loads: dict[str, LoadInFlight] = {}
        self._reserved: dict[str, int] = {}  # device label → bytes of loads in flight
        self.load_speed = LoadSpeed(config.load_speed)  # reported on /node
        self._budgets = {d.label: config.memory_budget or d.default_budget() for d in devices}
        self._tokenizers = loader.TokenizerCache()
        self._workers: dict[str, DeviceWorker] = {}
        self.sleeper = Sleeper(self)
        self.metrics.watch(self._live)

    # --- views ---------------------------------------------------------------------

    def records(self) -> list[ModelRecord]:
        return [self._snapshot(model_id) for model_id in self._records]

    def record(self, model_id: str) -> ModelRecord:
        if model_id not in self._records:
            raise ModelNotFound(f"The model {model_id!r} is not loaded on this node", param="model")
        return self._snapshot(model_id)

    def ready_ids(self) -> list[str]:
        return list(self._ready)

    def device_infos(self) -> list[DeviceInfo]:
        infos = []
        for device in self.devices:
            total, free = device.memory()
            infos.append(
                DeviceInfo(
                    index=device.index,
                    kind=device.kind,
                    name=device.name,
                    memory_total=total,
                    memory_free=free,
                    memory_used_by_models=self._used(device),
                    memory_budget=self._budgets[device.label],
                )
            )
        return infos

    def free_bytes(self, device: Device) -> int:
        """What a new model may still take on ``device``: budget left, capped by real free."""
        budget_left = self._budgets[device.label] - self._used(device)
        budget_left -= self._reserved.get(device.label, 0)
        _, actually_free = device.memory()
        return max(0, min(budget_left, actually_free))

    # --- lifecycle -----------------------------------------------------------------

    async def load(
        self, request: LoadRequest, listener: ProgressListener | None = None
    ) -> ModelRecord:
        source = request.source or request.model
        if request.source:
            model_id = request.model
        else:
            model_id = await asyncio.to_thread(sources.default_id, request.model, self.places)
        current = self._records.get(model_id)
        if current is not None and current.state == "unloading":
            raise Conflict(f"The model {model_id!r} is being unloaded; load it again after that")
        ready = self._ready.get(model_id)
        if ready is not None:
            # Named by its id, or by its folder however spelled (its name under a model dir,
            # its path, a trailing slash, a link to it): answered as loaded.
            named = request.source or (source if source != model_id else None)
            if named is not None and not await asyncio.to_thread(
                sources.same_folder, named, ready.record, self.places
            ):
                raise Conflict(
                    f"The model {model_id!r} is already loaded from {ready.record.source}; "
                    f"unload it before loading {named} under that name"
                )
            if self._ready.get(model_id) is not ready:  # unloaded meanwhile: load it afresh
                return await self.load(request, listener)
            if ready.harness.failure is not None and ready.record.state == "ready":
                # Its engine is gone (a dead vLLM engine core, a failed device): load it anew.
                log.warning("reloading %s: %s", model_id, ready.harness.failure)
                await self.unload(model_id, force=True)
                return await self.load(request, listener)
            if listener is not None:
                listener(LoadProgress(model=model_id, stage="ready", message="already loaded"))
            return self._snapshot(ready.record.id)
        load = self._loads.get(model_id)
        if load is None:
            # A failed record is replaced by this load.
            load = LoadInFlight(
                task=asyncio.get_running_loop().create_task(self._load(model_id, source, request))
            )
            self._loads[model_id] = load
            load.task.add_done_callback(lambda task: self._load_done(model_id, task))
        if listener is not None:
            load.listeners.append(listener)
        try:
            loaded = await asyncio.shield(load.task)
        finally:
            if listener is not None and listener in load.listeners:
                load.listeners.remove(listener)
        return self._snapshot(loaded.record.id)

    async def _load(self, model_id: str, source: str, request: LoadRequest) -> LoadedModel:
        """Settles the record whatever happens: ready; gone if the request was wrong (nothing
        was loaded); or failed with the reason if the model itself would not load."""
        record = ModelRecord(id=model_id, state="loading", source=source)
        self._records[model_id] = record
        try:
            return await self._bring_up(record, request)
        except (NotFound, InvalidRequest, InsufficientMemory, asyncio.CancelledError):
            if self._records.get(model_id) is record:
                del self._records[model_id]
            raise
        except Exception as exc:  # any other failure is kept in the record and reported
            log.exception("loading %s failed", model_id)
            record.state, record.error = "failed", f"{type(exc).__name__}: {exc}"
            raise ModelLoadFailed(f"Loading {model_id!r} failed: {record.error}") from exc

    async def _bring_up(self, record: ModelRecord, request: LoadRequest) -> LoadedModel:
        model_id, source = record.id, record.source
        progress = self._progress_publisher(model_id)
        progress("resolving", f"looking for {source}")
        param = "source" if request.source else "model"
        path = await asyncio.to_thread(sources.resolve, source, self.places, param)
        record.path = str(path)
        device = self._pick_device(request.device)
        wanted = request.engine or self.config.engine
        engine = await asyncio.to_thread(engines.choose, wanted, path, device, request)
        dtype = loader.choose_dtype(request.dtype or self.config.dtype, device)
        needed = await asyncio.to_thread(
            sources.estimate_bytes, path, dtype.itemsize if dtype.is_floating_point else None
        )
        free = self.free_bytes(device)
        progress(
            "checking", f"needs {needed} bytes, {free} free on {device.label} ({engine})", needed
        )
        if needed > free:
            raise InsufficientMemory(
                f"Not enough memory to load {model_id!r} on {device.label}: "
                f"needs {needed} bytes, {free} bytes free within the budget",
                extra={"needed_bytes": needed, "free_bytes": free, "device": device.label},
            )
        record.devices = [device.label]
        record.dtype = str(dtype).removeprefix("torch.")
        progress("loading", f"reading weights from {path}", needed)
        self._reserved[device.label] = self._reserved.get(device.label, 0) + needed
        try:
            started = await start_model(
                engine,
                model_id=model_id,
                path=path,
                device=device,
                dtype=dtype,
                needed=needed,
                budget_left=lambda: self.free_bytes(device) + needed,
                request=request,
                config=self.config,
                stats=self.metrics.engine_stats(model_id),
                worker=lambda: self._worker(device),
                progress=progress,
            )
        finally:
            self._reserved[device.label] -= needed
        weights, harness = started.weights, started.harness
        self.load_speed.observe(weights.memory_bytes, started.read_seconds)
        allowed = self.config.allow_client_chat_template
        weights.template = weights.template.allowing_client_templates(allowed)
        now = time.time()
        record.state, record.error = "ready", None
        record.memory_bytes = weights.memory_bytes + started.kv_cache_bytes
        record.context_length = started.context_length
        record.engine, record.type = engine, started.type
        record.tp, record.quant = request.tp, request.quant
        fmt = weights.template.format
        if started.type == "chat":  # an embedding model writes nothing: it has none
            record.capabilities = Capabilities(
                tools=fmt.can_call_tools,
                reasoning=fmt.can_reason,
                tool_format=fmt.tool_format,
                reasoning_format=fmt.reasoning_format,
            )
        record.loaded_at = record.last_used_at = now
        loaded = LoadedModel(record=record, device=device, weights=weights, harness=harness)
        loaded.idle.set()
        record.can_sleep = sleep_refusal(loaded) is None
        self._ready[model_id] = loaded
        progress("ready", f"{model_id} is ready on {device.label}")
        log.info(
            "loaded %s from %s on %s (%d bytes)", model_id, path, device.label, weights.memory_bytes
        )
        return loaded

    async def unload(self, model_id: str, *, force: bool = False) -> ModelRecord:
        record = self._records.get(model_id)
        if record is None:
            raise ModelNotFound(f"The model {model_id!r} is not loaded on this node", param="model")
        if record.state == "failed":
            del self._records[model_id]
            return record
        if record.state == "loading":
            raise Conflict(f"The model {model_id!r} is still loading; unload it once it is ready")
        if record.state == "unloading":
            raise Conflict(f"The model {model_id!r} is already being unloaded")
        loaded = self._ready[model_id]
        record.state = "unloading"
        if not force:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(loaded.idle.wait(), self.config.unload_drain_timeout)
        snapshot = self._snapshot(model_id)
        await loaded.harness.aclose()  # cancels whatever is still running
        del self._ready[model_id]
        del self._records[model_id]
        await asyncio.to_thread(loader.free, loaded.weights, loaded.device)
        self.metrics.model_unloads.labels(model_id).inc()
        log.info("unloaded %s", model_id)
        return snapshot

    async def aclose(self) -> None:
        for model_id in list(self._ready):
            await self.unload(model_id, force=True)
        for worker in self._workers.values():
            await asyncio.to_thread(worker.close)
        self._workers.clear()

    async def acquire(self, model_id: str, serving: ModelType = "chat") -> LoadedModel:
        """A ready model serving ``serving`` (else 400), waited for (bounded); see session()."""
        loaded = self._ready.get(model_id)
        if loaded is None:
            loaded = await self._wait_for(model_id)
        if loaded.record.state == "sleeping":
            await self.sleeper.wake(model_id)
        if loaded.record.state != "ready":
            raise NeuronUnavailable(f"The model {model_id!r} is being unloaded")
        loaded.check_serves(serving)
        return loaded

    async def tokenizer_for(self, model_id: str, source: str | None = None) -> Any:
        """A model's tokenizer, loaded or not (the tokenizer alone is cheap to read)."""
        if model_id in self._ready:
            return self._ready[model_id].tokenizer
        record = self._records.get(model_id)
        param = "source" if source and record is None else "model"
        source = record.source if record else (source or model_id)
        path = await asyncio.to_thread(sources.resolve, source, self.places, param)
        return await asyncio.to_thread(self._tokenizers.get, path)

    # --- internals -----------------------------------------------------------------

    def _worker(self, device: Device) -> DeviceWorker:
        """The device's one generation thread, started with its first model."""
        worker = self._workers.get(device.label)
        if worker is None:
            worker = self._workers[device.label] = DeviceWorker(device.torch_device)
        return worker

    def _live(self) -> list[LiveFigures]:
        return [
            LiveFigures(
                model=model_id,
                running=m.harness.num_running,
                waiting=m.harness.num_waiting,
                oldest_wait=m.harness.queue_wait(),
                cached_tokens=m.harness.cached_tokens,
                status=m.harness.status,
            )
            for model_id, m in list(self._ready.items())
        ]

    def _load_done(self, model_id: str, task: asyncio.Task[LoadedModel]) -> None:
        load = self._loads.pop(model_id, None)
        if task.cancelled():
            result = "cancelled"
        else:
            # Retrieved here, so a load nobody awaits any more logs no warning.
            error = task.exception()
            result = "ok" if error is None else load_result(error)
        self.metrics.model_loads.labels(model_id, result).inc()
        if result == "ok" and load is not None:
            duration = time.monotonic() - load.started
            self.metrics.model_load_duration.labels(model_id, "load").observe(duration)

    async def _wait_for(self, model_id: str) -> LoadedModel:
        load = self._loads.get(model_id)
        if load is None:
            record = self._records.get(model_id)
            if record is not None and record.state == "failed":
                raise ModelLoadFailed(f"Loading {model_id!r} failed: {record.error}")
            raise ModelNotFound(
                f"The model {model_id!r} does not exist or is not loaded on this node",
                param="model",
            )
        try:
            return await asyncio.wait_for(asyncio.shield(load.task), self.config.load_wait_timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The model {model_id!r} is still loading after {self.config.load_wait_timeout:g}s"
            ) from None

    def _snapshot(self, model_id: str) -> ModelRecord:
        record = self._records[model_id]
        loaded = self._ready.get(model_id)
        if loaded is None:
            return record.model_copy()
        return loaded.snapshot()

    def _used(self, device: Device) -> int:
        """What the device's models hold (a sleeping one's weights are in host memory)."""
        return sum(
            m.record.memory_bytes
            for m in self._ready.values()
            if m.device == device and m.record.state != "sleeping"
        )

    def _pick_device(self, wanted: str | None) -> Device:
        if wanted is not None:
            for device in self.devices:
                if wanted in (device.label, str(device.index)):
                    return device
            labels = ", ".join(d.label for d in self.devices)
            raise InvalidRequest(
                f"No device {wanted!r} on this node (it has {labels})", param="device"
            )
        return max(self.devices, key=self.free_bytes)

    def _progress_publisher(self, model_id: str) -> Callable[..., None]:
        def publish(stage: Any, message: str, needed: int | None = None) -> None:
            load = self._loads.get(model_id)
            if load is not None:
                load.publish(
                    LoadProgress(model=model_id, stage=stage, message=message, needed_bytes=needed)
                )

        return publish
