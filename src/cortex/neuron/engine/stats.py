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
    cached_tokens: int = 0  # real tokens in the KV cache (padding not counted)
    oldest_arrival: float | None = None  # monotonic arrival of the first waiting sequence


class EngineStats:
    def queued(self, seconds: float) -> None:
        """A sequence waited this long between arrival and its prefill."""

    def first_token(self, seconds: float) -> None:
        """Arrival to first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Between two generated tokens of one sequence."""

    def finished(self, seq: Sequence, now: float) -> None:
        """A sequence ended (any reason); its counts and end-to-end latency."""
