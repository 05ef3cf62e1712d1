"""Which sequences run this step, and the KV blocks they hold: the engine's waiting queue,
its running batch and its ``BlockManager``.

The scheduler owns them all, as in nano-vllm: ``waiting`` (arrived or preempted, not yet
prefilled, first in first out) and ``running`` (the batch, in the order they were
admitted), and the blocks every running sequence's table holds. Only the device worker's
thread touches a scheduler; the event loop reads the figures the harness publishes after
each step (``EngineStatus``).

Each step:

1. Cancelled sequences leave (waiting or running); their blocks are freed.
2. Every running sequence gets a slot for the token it decodes this step. When one needs
   a new block and none is free, the newest running sequence is preempted: its blocks are
   freed and it goes back to the front of ``waiting``, to be computed again (prompt and
   output so far) when blocks free up, as vLLM does. A running batch never fails for
   lack of memory.
3. Waiting sequences are admitted in arrival order while fewer than ``max_num_seqs`` run,
   their prompt's blocks fit (``BlockManager.can_allocate``: cached blocks are shared,
   not taken again) and the tokens they compute fit the step's ``max_prefill_tokens``
   (one is always admitted if its blocks fit, however long, so a long prompt is never
   starved). A prompt never needs more blocks than exist: the harness caps the context at
   the cache's size.

Finished sequences leave ``running`` through ``retire()`` at the end of the step; a
sequence whose prefill failed (it alone: see ``isolation``) through ``unadmit()``. Both
free their blocks; a finished sequence's full blocks stay cached for the next prompt.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.blocks import BlockManager
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.stats import EngineStatus


@dataclass(slots=True)
class Batch:
    """One step's plan."""

    decode: list[Sequence] = field(default_factory=list)  # running, one token each
    prefill: list[Sequence] = field(default_factory=list)  # admitted this step, in order
    cancelled: list[Sequence] = field(default_factory=list)  # dropped this step
    preempted: list[Sequence] = field(default_factory=list)  # back to waiting this step


@dataclass(slots=True)
class PrefixFigures:
    """Cumulative, since the scheduler began."""

    queried_tokens: int = 0  # prompt tokens of new sequences looked up in the cache
    hit_tokens: int = 0  # of those, found there
    prefill_tokens: int = 0  # tokens prefilled (recomputations included)
    preemptions: int = 0


class Scheduler:
    def __init__(self, max_num_seqs: int, max_prefill_tokens: int, blocks: BlockManager) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.blocks = blocks
        self.figures = PrefixFigures()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in the order they were admitted

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
        return min((seq.arrival_time for seq in self.waiting), default=None)

    @property
    def held_tokens(self) -> int:
        """Tokens whose KV the running sequences hold."""
        return sum(seq.table.num_tokens for seq in self.running if seq.table is not None)

    def status(self, kv_cache_bytes: int) -> EngineStatus:
        """What it holds now, in plain numbers (for the harness to publish)."""
        blocks, figures = self.blocks, self.figures
        return EngineStatus(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            cached_tokens=self.held_tokens,
            oldest_arrival=self.oldest_arrival,
            kv_block_size=blocks.block_size,
            kv_blocks_total=blocks.num_blocks,
            kv_blocks_used=blocks.num_used,
            kv_blocks_cached=blocks.num_cached_free,
            kv_cache_bytes=kv_cache_bytes,
            prefix_queried_tokens=figures.queried_tokens,
            prefix_hit_tokens=figures.hit_tokens,
            prefill_tokens=figures.prefill_tokens,
            preemptions=figures.preemptions,
        )

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def cancel_all(self) -> None:
        """Mark every sequence held cancelled; the next ``schedule`` drops them."""
        for seq in (*self.waiting, *self.running):
            seq.cancel()

    def schedule(self) -> Batch:
        """Drop the cancelled, reserve each running sequence's next slot (preempting the
        newest where blocks run out), admit what fits; ``running`` becomes decode + prefill."""
        batch = Batch()
        if any(seq.is_cancelled for seq in self.waiting):
            batch.cancelled = [seq for seq in self.waiting if seq.is_cancelled]
            self.waiting = deque(seq for seq in self.waiting if not seq.is_cancelled)
        staying: deque[Sequence] = deque()
        for seq in self.running:
            if seq.is_cancelled:
                batch.cancelled.append(seq)
                self._free(seq)
            else:
                staying.append(seq)
        while staying:
            seq = staying.popleft()
            table = seq.table
            assert table is not None
            while not self.blocks.can_append(table):
                victim = staying.pop() if staying else seq
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                self.blocks.append(table, seq.token_ids)
                batch.decode.append(seq)
        self._admit(batch)
        self.running = [*batch.decode, *batch.prefill]
        return batch

    def _admit(self, batch: Batch) -> None:
        room = self.max_num_seqs - len(batch.decode)
        budget = self.max_prefill_tokens
        while self.waiting and room > 0:
            seq = self.waiting[0]
            tokens = seq.token_ids
            computed = len(tokens) - self.blocks.cached_prefix(tokens)
            if batch.prefill and computed > budget:
                break
            if not self.blocks.can_allocate(tokens):
                break
            self.waiting.popleft()
            seq.table = self.blocks.allocate(tokens)
            seq.status = SequenceStatus.RUNNING
            batch.prefill.append(seq)
            cached = seq.table.cached_tokens
            if seq.preemptions == 0:
                self.figures.queried_tokens += len(tokens)
                self.figures.hit_tokens += cached
            self.figures.prefill_tokens += len(tokens) - cached
            budget -= len(tokens) - cached
            room -= 1

    def _preempt(self, seq: Sequence, batch: Batch) -> None:
        self._free(seq)
        seq.status = SequenceStatus.WAITING
        seq.preemptions += 1
        self.figures.preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def _free(self, seq: Sequence) -> None:
        if seq.table is not None:
            self.blocks.free_table(seq.table)
            seq.table = None

    def unadmit(self, seqs: list[Sequence]) -> None:
        """Drop sequences admitted this step whose prefill failed; their blocks are freed."""
        if seqs:
            for seq in seqs:
                self._free(seq)
            self.running = [seq for seq in self.running if all(seq is not s for s in seqs)]

    def requeue(self, seqs: list[Sequence]) -> None:
        """Put sequences admitted this step back at the front of ``waiting`` (in order):
        their blocks are freed, to be allocated again."""
        for seq in reversed(seqs):
            self._free(seq)
            seq.status = SequenceStatus.WAITING
            self.waiting.appendleft(seq)
        self.running = [seq for seq in self.running if all(seq is not s for s in seqs)]

    def readmit(self, seq: Sequence) -> bool:
        """Admit again, alone, a sequence ``requeue`` put back (its blocks allocated
        afresh); False (it stays first in ``waiting``) when they do not fit now."""
        tokens = seq.token_ids
        if not self.blocks.can_allocate(tokens):
            return False
        self.waiting.remove(seq)
        seq.table = self.blocks.allocate(tokens)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return True

    def retire(self) -> None:
        """Drop finished sequences from ``running``; their blocks are freed (full ones stay
        cached)."""
        if any(seq.is_finished for seq in self.running):
            for seq in self.running:
                if seq.is_finished:
                    self._free(seq)
            self.running = [seq for seq in self.running if not seq.is_finished]

    def drain(self) -> list[Sequence]:
        """Every sequence held, waiting then running; the scheduler is left empty."""
        seqs = [*self.waiting, *self.running]
        for seq in seqs:
            self._free(seq)
        self.waiting.clear()
        self.running = []
        return seqs
