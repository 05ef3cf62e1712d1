"""Which sequences run this step: the engine's waiting queue and its running batch.

The scheduler owns both collections, as in nano-vllm: ``waiting`` (arrived, not yet
prefilled, first in first out) and ``running`` (the batch, in the order of the KV
cache's rows). Only the device worker's thread touches a scheduler; the event loop
reads the figures the harness publishes after each step (``EngineStatus``).

Each step every running sequence decodes; waiting sequences are admitted (prefilled
together, appended to ``running``) in arrival order while fewer than
``max_num_seqs`` run and their prompts fit the step's ``max_prefill_tokens`` (one is
always admitted if there is room, however long, so a long prompt is never starved).
Cancelled sequences leave at the step after ``cancel()``, waiting or running;
finished ones leave ``running`` through ``retire()`` at the end of the step. A sequence
admitted this step whose prefill failed (it alone: see ``isolation``) never got a cache row,
and leaves ``running`` through ``unadmit()`` before anything counts rows again.

``running`` is the source of truth for which sequence each cache row holds: when
running sequences leave, ``Batch.kept`` and ``retire()`` give the positions of those
that stay, and the harness hands them to ``ModelRunner.keep`` so the rows follow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class Batch:
    """One step's plan."""

    # Running sequences already in the cache: its rows, in order.
    decode: list[Sequence] = field(default_factory=list)
    # Admitted this step, in arrival order; their rows go after ``decode``'s.
    prefill: list[Sequence] = field(default_factory=list)
    # Dropped this step (cancelled while waiting, then while running).
    cancelled: list[Sequence] = field(default_factory=list)
    # Positions of ``decode`` in ``running`` as it stood: the cache rows that stay.
    kept: list[int] = field(default_factory=list)


class Scheduler:
    def __init__(self, max_num_seqs: int, max_prefill_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in the KV cache's row order

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def oldest_arrival(self) -> float | None:
        """When the first waiting sequence arrived (None when none wait)."""
        return self.waiting[0].arrival_time if self.waiting else None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def cancel_all(self) -> None:
        """Mark every sequence held cancelled; the next ``schedule`` drops them."""
        for seq in (*self.waiting, *self.running):
            seq.cancel()

    def schedule(self) -> Batch:
        """Drop the cancelled, admit what fits; ``running`` becomes decode + prefill."""
        batch = Batch()
        if any(seq.is_cancelled for seq in self.waiting):
            batch.cancelled = [seq for seq in self.waiting if seq.is_cancelled]
            self.waiting = deque(seq for seq in self.waiting if not seq.is_cancelled)
        for i, seq in enumerate(self.running):
            if seq.is_cancelled:
                batch.cancelled.append(seq)
            else:
                batch.kept.append(i)
                batch.decode.append(seq)
        room = self.max_num_seqs - len(batch.decode)
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
        self.running = [*batch.decode, *batch.prefill]
        return batch

    def unadmit(self, seqs: list[Sequence]) -> None:
        """Drop sequences admitted this step that got no cache row (their prefill failed),
        so that ``running`` stays in step with the cache's rows."""
        if seqs:
            self.running = [seq for seq in self.running if all(seq is not s for s in seqs)]

    def retire(self) -> list[int]:
        """Drop finished sequences from ``running``; the positions of those that stay."""
        kept = [i for i, seq in enumerate(self.running) if not seq.is_finished]
        if len(kept) < len(self.running):
            self.running = [self.running[i] for i in kept]
        return kept

    def drain(self) -> list[Sequence]:
        """Every sequence held, waiting then running; the scheduler is left empty."""
        seqs = [*self.waiting, *self.running]
        self.waiting.clear()
        self.running = []
        return seqs
