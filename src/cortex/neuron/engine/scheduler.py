"""Which sequences run this step: a waiting queue and admission into the batch.

Owned by the worker thread, except ``num_waiting``/``queue_wait`` which others read
for status. Each step every running sequence decodes; waiting sequences are admitted
(prefilled together) while fewer than ``max_num_seqs`` run and their prompts fit the
step's ``max_prefill_tokens`` (one is always admitted if there is room, however
long, so a long prompt is never starved). Cancelled sequences leave at the step
after ``cancel()``, waiting or running.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class Batch:
    prefill: list[Sequence] = field(default_factory=list)
    cancelled: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, max_num_seqs: int, max_prefill_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def queue_wait(self) -> float:
        """Seconds the oldest waiting sequence has waited (0 when none wait)."""
        try:
            oldest = self.waiting[0]
        except IndexError:
            return 0.0
        return max(0.0, time.monotonic() - oldest.arrival_time)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self, running: list[Sequence]) -> Batch:
        batch = Batch()
        if any(seq.is_cancelled for seq in self.waiting):
            for seq in [s for s in self.waiting if s.is_cancelled]:
                self.waiting.remove(seq)
                batch.cancelled.append(seq)
        batch.cancelled.extend(seq for seq in running if seq.is_cancelled)
        room = self.max_num_seqs - (len(running) - len(batch.cancelled))
        budget = self.max_prefill_tokens
        while self.waiting and room > 0:
            seq = self.waiting[0]
            if batch.prefill and seq.num_prompt_tokens > budget:
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            batch.prefill.append(seq)
            budget -= seq.num_prompt_tokens
            room -= 1
        return batch

    def drain(self) -> list[Sequence]:
        seqs = list(self.waiting)
        self.waiting.clear()
        return seqs
