"""``LoadedModel``: a model in memory and ready to serve: its weights, its engine, and the
count of requests in flight that an unload waits for."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cortex.neuron.devices import Device
from cortex.neuron.engine.base import Harness
from cortex.neuron.loader import LoadedWeights
from cortex.protocol.lifecycle import ModelRecord


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
