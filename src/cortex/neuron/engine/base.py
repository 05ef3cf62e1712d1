"""The seam between the HTTP layer and whatever generates tokens.

A ``Harness`` owns one loaded model's generation. Contract:

* ``submit`` is called on the event loop, never blocks, and returns at once; the
  work happens on the device's worker thread, never on the event loop. It raises
  ``Overloaded`` when the model's waiting queue is full.
* The returned ``InferenceStream`` yields ``InferenceEvent``s in order and ends
  after exactly one ``Done`` or ``Error``.
* One request harms no other: a request the engine must not run ends its own stream
  with an ``Error`` at once, and a failure that belongs to one sequence (its sampling,
  its output, its prompt's prefill) ends that sequence alone; the others go on.
* ``InferenceStream.aclose()`` cancels: the sequence is dropped at the next engine
  step (waiting or running) and its resources freed. Closing a finished stream is a
  no-op. Dropping a stream without closing it is a leak the caller must not cause.
* ``aclose()`` on the harness cancels every sequence, returns once the worker has
  let them all go, and leaves the worker.
* The status figures (``num_running``, ``num_waiting``, ``queue_wait``,
  ``cached_tokens``, ``status``) are cheap to read on the event loop: plain numbers the
  worker published at its last step (plus what was submitted since), never a device sync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cortex.neuron.wire.events import InferenceEvent
from cortex.neuron.wire.output import OutputProcessor

if TYPE_CHECKING:  # stats imports sequence, which imports this module
    from cortex.neuron.engine.stats import EngineStatus
    from cortex.neuron.structured.matcher import Constraint

# Below this a temperature is greedy: the limit of sampling as the temperature falls to 0,
# reached without dividing logits by a number so small that they overflow (1e-320 → inf).
MIN_TEMPERATURE = 1e-5


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """Per-sequence sampling; validated at the HTTP edge and checked again when the engine
    admits the sequence (``engine.isolation.check_request``), so that no batch runs with a
    value that could fail it.

    ``temperature`` below ``MIN_TEMPERATURE`` (0 included) means greedy. ``top_k <= 0`` and
    ``top_p == 1`` and ``min_p == 0`` mean off, and so does a ``top_k`` past the vocabulary;
    penalties at their neutral values cost nothing. Any integer seed is taken, modulo 2**64.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    # None: no logprobs; k >= 0: the chosen token's logprob and the k most likely.
    logprobs: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


@dataclass(slots=True)
class InferenceRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output: OutputProcessor
    # Token ids that end generation (the model's EOS ids); stop_token_ids add to them.
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    # How a token id reads, for logprobs (the tokenizer's, set when logprobs are asked).
    token_text: Callable[[int], str] | None = None
    # The grammar its output must match (structured outputs), with this sequence's matcher.
    constraint: Constraint | None = None


class InferenceStream(Protocol):
    @property
    def completion_tokens(self) -> int:
        """Tokens generated up to the last event handed out (for running usage figures)."""
        ...

    def __aiter__(self) -> AsyncIterator[InferenceEvent]: ...

    async def aclose(self) -> None: ...


class Harness(Protocol):
    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    def queue_wait(self) -> float:
        """Seconds the oldest waiting sequence has waited."""
        ...

    @property
    def cached_tokens(self) -> int:
        """Tokens held in the KV cache."""
        ...

    @property
    def status(self) -> EngineStatus:
        """The engine's figures as of its worker's last step (the paged KV cache's blocks,
        the prefix cache's hits, preemptions); submissions since are not counted."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the harness can no longer generate (a device error), else None."""
        ...

    def check_room(self) -> None:
        """Raise ``Overloaded`` when the waiting queue is full (before a response starts)."""
        ...

    def submit(self, request: InferenceRequest) -> InferenceStream: ...

    async def aclose(self) -> None: ...
