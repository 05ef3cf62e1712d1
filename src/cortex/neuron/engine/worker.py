"""``DeviceWorker``: the one thread that runs generation on a device.

Every model on a device registers its engine here; the thread steps each engine that
has work, in turn, so models on one GPU never run torch work at once from two
threads. An engine's step that raises a device error (CUDA, not out-of-memory)
fails every engine on the device — its models answer with that error — and the
worker keeps running for the CPU-side bookkeeping; the process never dies of it.

Contract: ``add``, ``remove`` and ``wake()`` may be called from any thread; an
engine's ``has_work``, ``step`` and ``fail`` are called on this thread only.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import torch

log = logging.getLogger(__name__)


class Steppable(Protocol):
    @property
    def has_work(self) -> bool: ...

    def step(self) -> None: ...

    def fail(self, reason: str) -> None:
        """Fail everything and refuse further work (the device is gone)."""
        ...


class DeviceWorker:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._engines: list[Steppable] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"device:{device}", daemon=True)
        self._thread.start()

    def add(self, engine: Steppable) -> None:
        with self._cond:
            self._engines.append(engine)
            self._cond.notify()

    def remove(self, engine: Steppable) -> None:
        with self._cond:
            if engine in self._engines:
                self._engines.remove(engine)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not any(e.has_work for e in self._engines):
                    self._cond.wait()
                if self._closing:
                    return
                ready = [e for e in self._engines if e.has_work]
            for engine in ready:
                try:
                    engine.step()
                except Exception as exc:  # a broken device must not end the thread
                    self._device_failed(exc)

    def _device_failed(self, exc: Exception) -> None:
        reason = f"device {self.device} failed: {type(exc).__name__}: {exc}"
        log.error("%s; failing its models", reason)
        with self._cond:
            engines = list(self._engines)
        for engine in engines:
            engine.fail(reason)
