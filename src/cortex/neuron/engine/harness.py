"""``TransformersHarness``: the engine loop on a worker thread.

``step()`` reads like the engine it is: schedule → run the model → sample →
postprocess (detokenize, check stops, emit events). The worker thread owns the
scheduler, the runner and every tensor; the event loop only submits sequences and
receives events through ``_Stream`` (a queue fed with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import torch

from cortex.neuron.engine.base import InferenceRequest, InferenceStream
from cortex.neuron.engine.runner import ModelRunner
from cortex.neuron.engine.sampling import make_generator, sample_next
from cortex.neuron.engine.scheduler import Scheduler
from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.wire.events import Done, Error, FinishReason, InferenceEvent

log = logging.getLogger(__name__)


class _Stream:
    """The consumer's end of one sequence; an async iterator of events."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Any) -> None:
        self._loop = loop
        self._wake = wake
        self._queue: asyncio.Queue[tuple[list[InferenceEvent], int]] = asyncio.Queue()
        self._pending: deque[InferenceEvent] = deque()
        self._ended = False
        self.seq: Sequence | None = None
        self.completion_tokens = 0  # generated up to the last event handed out

    def post(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        """Called on the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (events, completion_tokens))
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            if self.seq is not None:
                self.seq.cancel()

    def __aiter__(self) -> AsyncIterator[InferenceEvent]:
        return self

    async def __anext__(self) -> InferenceEvent:
        if not self._pending:
            if self._ended:
                raise StopAsyncIteration
            events, self.completion_tokens = await self._queue.get()
            self._pending.extend(events)
        event = self._pending.popleft()
        if isinstance(event, Done | Error):
            self._ended = True
            self._pending.clear()
        return event

    async def aclose(self) -> None:
        if not self._ended and self.seq is not None:
            self._ended = True
            self.seq.cancel()
            self._wake()


class TransformersHarness:
    """Generation for one transformers model on one device."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        *,
        max_model_len: int,
        max_num_seqs: int = 1,
        name: str = "model",
    ) -> None:
        self.max_model_len = max_model_len
        self._device = device
        self._runner = ModelRunner(model, device)
        self._scheduler = Scheduler(max_num_seqs)
        self._cond = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._closing = False
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"engine:{name}", daemon=True)
        self._thread.start()

    @property
    def num_running(self) -> int:
        return self._scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return len(self._incoming) + self._scheduler.num_waiting

    @property
    def failure(self) -> str | None:
        return self._failure

    def submit(self, request: InferenceRequest) -> InferenceStream:
        stream = _Stream(asyncio.get_running_loop(), self._wake)
        seq = Sequence(request=request, emit=stream.post)
        stream.seq = seq
        if self._failure is not None or self._closing:
            stream.post([Error(self._failure or "the model is being unloaded")], 0)
            return stream
        with self._cond:
            self._incoming.append(seq)
            self._cond.notify()
        return stream

    async def aclose(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        self._runner.model = None

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- worker thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._incoming or self._scheduler.has_work):
                    self._cond.wait()
                if self._closing:
                    break
                while self._incoming:
                    self._scheduler.add(self._incoming.popleft())
            self.step()
        for seq in [*self._scheduler.drain(), *self._incoming]:
            self._finish(seq, "cancelled")
        self._incoming.clear()

    def step(self) -> None:
        batch = self._scheduler.schedule()
        for seq in batch.cancelled:
            self._finish(seq, "cancelled")
        try:
            if batch.decode:
                tokens = sample_next(self._runner.decode(batch.decode), batch.decode)
                for seq, token in zip(batch.decode, tokens, strict=True):
                    self._postprocess(seq, token)
            for seq in batch.prefill:
                if not seq.request.params.is_greedy:
                    seq.generator = make_generator(seq.request.params.seed, self._device)
                token = sample_next(self._runner.prefill(seq), [seq])[0]
                self._postprocess(seq, token)
        except Exception as exc:  # a failed forward must not kill the worker
            self._fail(batch.decode + batch.prefill, exc)

    def _postprocess(self, seq: Sequence, token: int) -> None:
        request, params = seq.request, seq.request.params
        seq.output_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
        events: list[InferenceEvent] = []
        if token in request.eos_token_ids and not params.ignore_eos:
            seq.finish_reason = "stop"
        elif token in params.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        else:
            produced, stop = request.output.feed(token)
            events.extend(produced)
            if stop is not None:
                seq.finish_reason, seq.stop_reason = "stop", stop
        if seq.finish_reason is None and (
            seq.num_completion_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            if not isinstance(seq.stop_reason, str):
                events.extend(request.output.finish())
            events.append(self._done(seq, seq.finish_reason))
            self._release(seq)
        if events:
            seq.emit(events, seq.num_completion_tokens)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        seq.finish_reason = reason
        self._release(seq)
        seq.emit([self._done(seq, reason)], seq.num_completion_tokens)

    def _fail(self, seqs: list[Sequence], exc: Exception) -> None:
        message = f"generation failed: {type(exc).__name__}: {exc}"
        log.exception("engine step failed on %s", self._device)
        if self._device.type == "cuda" and not isinstance(exc, torch.OutOfMemoryError):
            # A device error leaves CUDA unusable: fail this model, not the process.
            self._failure = f"device {self._device} failed: {exc}"
            seqs = [*seqs, *self._scheduler.drain()]
        for seq in seqs:
            seq.finish_reason = "error"
            self._release(seq)
            seq.emit([Error(message)], seq.num_completion_tokens)

    def _release(self, seq: Sequence) -> None:
        self._scheduler.finish(seq)
        self._runner.release(seq)

    @staticmethod
    def _done(seq: Sequence, reason: FinishReason) -> Done:
        return Done(
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_completion_tokens,
            stop_reason=seq.stop_reason,
            reasoning_tokens=seq.request.output.reasoning_tokens,
        )
