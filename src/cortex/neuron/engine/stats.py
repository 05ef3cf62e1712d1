"""What the engine reports about its work, per model.

``EngineStats`` (called on the worker thread) records what happened: a no-op base;
``neuron.metrics`` gives one bound to a model's Prometheus series. Keeping the engine
ignorant of Prometheus keeps it testable alone.

``EngineStatus`` is what an engine holds now, as plain numbers the worker publishes
(see ``TransformersHarness``) so that the event loop can read them without touching a
tensor or a queue the worker owns.
"""

from __future__ import annotations

from dataclasses import dataclass

from cortex.neuron.engine.sequence import Sequence


@dataclass(slots=True, frozen=True)
class EngineStatus:
    """An engine's figures as of its worker's last step; replaced whole, never edited."""

    num_running: int = 0
    num_waiting: int = 0
    cached_tokens: int = 0  # tokens whose KV the running sequences hold
    oldest_arrival: float | None = None  # monotonic arrival of the first waiting sequence
    # The paged KV cache: blocks of ``kv_block_size`` token slots, ``kv_blocks_total`` in
    # all; used ones belong to live sequences, cached ones are free but still hold a prefix
    # a new prompt may reuse (they are handed out last). ``kv_cache_bytes``: the whole
    # cache's memory; a block's is ``kv_cache_bytes // kv_blocks_total``.
    kv_block_size: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_cached: int = 0
    kv_cache_bytes: int = 0
    # Since load, cumulative: prompt tokens looked up in the prefix cache, those found
    # there (their KV reused, not computed), prompt tokens computed (recomputations after
    # a preemption included), and sequences preempted for lack of KV blocks.
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefill_tokens: int = 0
    preemptions: int = 0

    @property
    def prefix_hit_ratio(self) -> float:
        """The share of prompt tokens found in the prefix cache (0 before any prompt)."""
        return (
            self.prefix_hit_tokens / self.prefix_queried_tokens
            if self.prefix_queried_tokens
            else 0.0
        )


class EngineStats:
    def queued(self, seconds: float) -> None:
        """A sequence waited this long between arrival and its prefill."""

    def first_token(self, seconds: float) -> None:
        """Arrival to first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Between two generated tokens of one sequence."""

    def finished(self, seq: Sequence, now: float) -> None:
        """A sequence ended (any reason); its counts and end-to-end latency."""

    def embedded(self, inputs: int, tokens: int, seconds: float) -> None:
        """An embeddings request was answered: its inputs, their tokens, arrival to answer."""
