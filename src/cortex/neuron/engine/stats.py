"""What the engine reports about its work, per model (called on the worker thread).

``EngineStats`` is a no-op base; ``neuron.metrics`` gives one bound to a model's
Prometheus series. Keeping the engine ignorant of Prometheus keeps it testable alone.
"""

from __future__ import annotations

from cortex.neuron.engine.sequence import Sequence


class EngineStats:
    def queued(self, seconds: float) -> None:
        """A sequence waited this long between arrival and its prefill."""

    def first_token(self, seconds: float) -> None:
        """Arrival to first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Between two generated tokens of one sequence."""

    def finished(self, seq: Sequence, now: float) -> None:
        """A sequence ended (any reason); its counts and end-to-end latency."""
