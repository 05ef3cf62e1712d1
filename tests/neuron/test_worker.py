"""A device error fails that device's models with the reason; the worker keeps serving."""

from __future__ import annotations

import threading

import torch

from cortex.neuron.engine.worker import DeviceWorker


class FakeEngine:
    """Has work until stepped ``steps`` times; the step named in ``explode_at`` raises."""

    def __init__(self, steps: int, explode_at: int | None = None) -> None:
        self.left = steps
        self.explode_at = explode_at
        self.stepped = 0
        self.failed: str | None = None
        self.done = threading.Event()
        self.go = threading.Event()

    @property
    def has_work(self) -> bool:
        return self.go.is_set() and self.failed is None and self.left > 0

    def step(self) -> None:
        self.stepped += 1
        if self.stepped == self.explode_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.left -= 1
        if not self.left:
            self.done.set()

    def fail(self, reason: str) -> None:
        self.failed = reason
        self.done.set()


def test_a_device_error_fails_every_model_on_the_device_and_the_worker_lives_on() -> None:
    worker = DeviceWorker(torch.device("cpu"))
    try:
        broken, beside = FakeEngine(steps=5, explode_at=2), FakeEngine(steps=1000)
        worker.add(broken)
        worker.add(beside)
        for engine in (broken, beside):
            engine.go.set()
        worker.wake()
        assert broken.done.wait(5)
        assert beside.done.wait(5)
        for engine in (broken, beside):
            assert engine.failed is not None
            assert "device cpu failed" in engine.failed
            assert "illegal memory access" in engine.failed
        assert beside.stepped < 1000  # failed, not run to the end

        later = FakeEngine(steps=3)
        later.go.set()
        worker.add(later)  # a model loaded afterwards is served by the same thread
        assert later.done.wait(5)
        assert later.failed is None
        assert later.stepped == 3
    finally:
        worker.close()
