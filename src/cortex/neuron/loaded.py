"""``LoadedModel``: a model in memory and ready to serve: its weights, its engine, and the
count of requests in flight that an unload waits for. ``LoadInFlight``: a load under way
and who listens to its progress."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cortex.errors import InsufficientMemory, InvalidRequest, NotFound
from cortex.neuron.devices import Device
from cortex.neuron.engine.base import Harness
from cortex.neuron.loader import LoadedWeights
from cortex.protocol.lifecycle import LoadProgress, ModelRecord, ModelType

ProgressListener = Callable[[LoadProgress], None]


@dataclass(slots=True, eq=False)
class LoadedModel:
    record: ModelRecord
    device: Device
    weights: LoadedWeights
    harness: Harness
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def tokenizer(self) -> Any:
        return self.weights.tokenizer

    def check_serves(self, wanted: ModelType) -> None:
        """A 400 when a request asks the model for what it does not do: text from an
        embedding model, embeddings from a generative one."""
        name = self.record.id
        if self.record.type == wanted:
            return
        if self.record.type == "embedding":
            raise InvalidRequest(
                f"The model {name!r} is an embedding model: it does not generate text. "
                "Send it to POST /v1/embeddings",
                param="model",
            )
        raise InvalidRequest(
            f"The model {name!r} does not serve embeddings: it is a generative model. "
            "Ask an embedding model",
            param="model",
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Counts one request in flight for the model's lifetime (unload drains these)."""
        self.active += 1
        self.idle.clear()
        self.record.last_used_at = time.time()
        try:
            yield
        finally:
            self.active -= 1
            self.record.last_used_at = time.time()
            if self.active == 0:
                self.idle.set()

    def snapshot(self) -> ModelRecord:
        """Its record with the engine's figures as of its last step."""
        # Requests being prepared count as in flight, and so do sequences the engine has
        # not dropped yet (a cancelled one leaves at its next step).
        harness = self.harness
        queued = harness.num_waiting
        status = harness.status
        update: dict[str, object] = {
            "in_flight": max(self.active - queued, harness.num_running),
            "queued": queued,
            "queue_wait": harness.queue_wait(),
            "kv_cache_bytes": status.kv_cache_bytes,
            "kv_block_size": status.kv_block_size,
            "kv_blocks_total": status.kv_blocks_total,
            "kv_blocks_used": status.kv_blocks_used,
            "prefix_cache_hit_ratio": status.prefix_hit_ratio,
        }
        if harness.failure is not None and self.record.state == "ready":
            # It can no longer generate: failed, with why (a load of it loads it anew).
            update |= {"state": "failed", "error": harness.failure}
        return self.record.model_copy(update=update)


@dataclass(slots=True, eq=False)
class LoadInFlight:
    task: asyncio.Task[LoadedModel]
    listeners: list[ProgressListener] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def publish(self, progress: LoadProgress) -> None:
        for listener in list(self.listeners):
            listener(progress)


def load_result(error: BaseException) -> str:
    """The ``result`` label of a failed load."""
    if isinstance(error, InsufficientMemory):
        return "no_memory"
    return "not_found" if isinstance(error, NotFound) else "failed"


class LoadSpeed:
    """How fast this node reads weights to its device, in bytes per second: the configured
    figure until a load is timed, then the running average of timed loads (each new one
    counts for half)."""

    def __init__(self, configured: float | None) -> None:
        self.value = configured
        self._timed = False

    def observe(self, nbytes: int, seconds: float | None) -> None:
        if not seconds or seconds <= 0 or nbytes <= 0:
            return
        measured = nbytes / seconds
        old = self.value if self._timed else None
        self.value = measured if old is None else (old + measured) / 2
        self._timed = True
