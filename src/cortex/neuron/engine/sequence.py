"""One request's state inside the engine: ids, sampling params, status, timings.

Made on the event loop by ``submit`` and handed to the worker through the harness's
locked inbox; from then on owned by the worker thread, with one exception:
``cancel()`` may be called from the event loop; it only sets a flag the worker reads
at the next step.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from cortex.neuron.engine.base import InferenceRequest
from cortex.neuron.engine.blocks import BlockTable
from cortex.neuron.wire.events import Done, FinishReason, InferenceEvent


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sink(Protocol):
    """Where a sequence's events go; ``put`` runs on the event loop."""

    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None: ...


@dataclass(slots=True, eq=False)
class Sequence:
    request: InferenceRequest
    sink: Sink
    status: SequenceStatus = SequenceStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    last_token_time: float = 0.0
    # The KV blocks its tokens occupy while it runs (None while it waits); how many times it
    # was preempted (its blocks freed, its tokens so far to be computed again).
    table: BlockTable | None = None
    preemptions: int = 0
    _cancelled: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_completion_tokens

    @property
    def token_ids(self) -> list[int]:
        """The prompt and what it generated so far: what a recompute prefills."""
        return [*self.request.prompt_ids, *self.output_ids]

    @property
    def last_token_id(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.request.prompt_ids[-1]

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def cancel(self) -> None:
        """Ask the worker to drop this sequence at its next step (any thread)."""
        self._cancelled = True

    def done(self, reason: FinishReason) -> Done:
        """The event that ends its stream, with its counts."""
        return Done(
            finish_reason=reason,
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=self.num_completion_tokens,
            stop_reason=self.stop_reason,
            reasoning_tokens=self.request.output.reasoning_tokens,
        )
