"""Which sequences run this step: waiting/running queues.

Owned by the worker thread. Each step admits at most one waiting sequence for
prefill (while fewer than ``max_num_seqs`` run) and decodes every running one.
Cancelled sequences leave at the step after ``cancel()``, waiting or running.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class Batch:
    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    cancelled: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.prefill or self.decode or self.cancelled)


class Scheduler:
    def __init__(self, max_num_seqs: int = 1) -> None:
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> Batch:
        batch = Batch()
        for seq in [s for s in self.waiting if s.is_cancelled]:
            self.waiting.remove(seq)
            batch.cancelled.append(seq)
        for seq in [s for s in self.running if s.is_cancelled]:
            self.running.remove(seq)
            batch.cancelled.append(seq)
        batch.decode = list(self.running)
        if self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.prefill.append(seq)
        return batch

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)

    def drain(self) -> list[Sequence]:
        """Remove and return every sequence (for shutdown)."""
        seqs = [*self.running, *self.waiting]
        self.running.clear()
        self.waiting.clear()
        return seqs
