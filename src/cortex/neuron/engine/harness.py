"""``TransformersHarness``: continuous batching for one model, stepped by its device's worker.

``step()`` reads like the engine it is: take the inbox and schedule → run the model (one
batched decode for every running sequence, one batched prefill for those joining) →
sample → postprocess (detokenize, check stops, emit events) → retire the finished →
publish the status.

Who owns what, on which thread:

* The device worker's thread owns the ``Scheduler`` (the waiting and running
  sequences), the ``ModelRunner`` (the KV cache, its rows kept in step with the
  scheduler's ``running``) and every tensor. Nothing else reads them.
* The event loop owns the ``_Stream``s. It hands new sequences over through
  ``_inbox`` and asks for the end through ``_closing``; both are touched only under
  ``_lock``, the one thing the two threads share besides ``Sequence.cancel()``.
* The worker publishes ``_status``, an ``EngineStatus`` of plain numbers, under the lock
  when it takes the inbox and schedules, and at the end of each step. ``num_running``,
  ``num_waiting``, ``queue_wait()``, ``cached_tokens`` and ``check_room()`` read it
  (plus the inbox, for sequences submitted since), so the event loop never touches a
  tensor or a worker-owned queue; their figures are as of the worker's last step.
* Events go to the event loop with one ``call_soon_threadsafe`` per step.
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

from cortex.errors import Overloaded
from cortex.neuron.engine.base import InferenceRequest, InferenceStream
from cortex.neuron.engine.runner import ModelRunner, can_batch
from cortex.neuron.engine.sampling import make_generator, sample_next, token_logprobs
from cortex.neuron.engine.scheduler import Batch, Scheduler
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.stats import EngineStats, EngineStatus
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.wire.events import Done, Error, FinishReason, InferenceEvent, TokenLogprob

log = logging.getLogger(__name__)

Posts = list[tuple[Sequence, list[InferenceEvent], int]]


class _Stream:
    """The consumer's end of one sequence; an async iterator of events."""

    def __init__(self, wake: Any) -> None:
        self._wake = wake
        self._queue: asyncio.Queue[tuple[list[InferenceEvent], int]] = asyncio.Queue()
        self._pending: deque[InferenceEvent] = deque()
        self._ended = False
        self.seq: Sequence | None = None
        self.completion_tokens = 0  # generated up to the last event handed out

    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        """On the event loop."""
        self._queue.put_nowait((events, completion_tokens))

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


def _dispatch(posts: Posts) -> None:
    for seq, events, count in posts:
        seq.sink.put(events, count)


class TransformersHarness:
    """Generation for one transformers model; stepped by its device's ``DeviceWorker``."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        worker: DeviceWorker,
        *,
        max_model_len: int,
        max_num_seqs: int = 32,
        max_queue: int = 256,
        max_prefill_tokens: int = 8192,
        stats: EngineStats | None = None,
        name: str = "model",
    ) -> None:
        self.name = name
        self.max_model_len = max_model_len
        self.max_queue = max_queue
        self.stats = stats or EngineStats()
        self._device = device
        self._worker = worker
        self._runner = ModelRunner(model, device)
        # Models whose caches cannot be padded and moved run one sequence at a time.
        self._scheduler = Scheduler(max_num_seqs if can_batch(model) else 1, max_prefill_tokens)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: str | None = None
        self._idle = threading.Event()  # set while the worker holds no sequence
        self._idle.set()
        # Shared by the event loop and the worker: written only under the lock. The event
        # loop alone sets ``_closing``; the worker alone sets ``_status``, replacing it
        # whole, so a lone read of either needs no lock.
        self._lock = threading.Lock()
        self._inbox: deque[Sequence] = deque()  # submitted, not yet taken by the worker
        self._closing = False
        self._status = EngineStatus()
        worker.add(self)

    # --- status (any thread; as of the worker's last step) -------------------------------

    @property
    def num_running(self) -> int:
        return self._status.num_running

    @property
    def num_waiting(self) -> int:
        with self._lock:
            return self._status.num_waiting + len(self._inbox)

    def queue_wait(self) -> float:
        with self._lock:
            oldest = self._status.oldest_arrival
            if oldest is None and self._inbox:
                oldest = self._inbox[0].arrival_time
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    @property
    def cached_tokens(self) -> int:
        return self._status.cached_tokens

    @property
    def failure(self) -> str | None:
        return self._failure

    # --- the event loop's side -----------------------------------------------------------

    def check_room(self) -> None:
        """Raise ``Overloaded`` (429, Retry-After) when no more sequences may wait."""
        if self.num_waiting >= self.max_queue:
            raise Overloaded(
                f"The model {self.name!r} has {self.num_waiting} requests waiting, its limit; "
                "retry shortly",
                headers={"Retry-After": "1"},
            )

    def submit(self, request: InferenceRequest) -> InferenceStream:
        """Queue a sequence; raises ``Overloaded`` (429) when the waiting queue is full."""
        self._loop = asyncio.get_running_loop()
        stream = _Stream(self._worker.wake)
        seq = Sequence(request=request, sink=stream)
        stream.seq = seq
        if self._failure is not None or self._closing:
            stream.put([Error(self._failure or "the model is being unloaded")], 0)
            return stream
        self.check_room()
        with self._lock:
            self._inbox.append(seq)
            self._idle.clear()
        self._worker.wake()
        return stream

    async def aclose(self) -> None:
        """Cancel every sequence, wait until the worker has let them go, leave the worker.

        Touches nothing the worker owns: it sets ``_closing`` under the lock; the worker,
        at its next step, takes the inbox and cancels every sequence it holds, ends their
        streams with ``Done(cancelled)`` and, holding nothing, sets ``_idle``."""
        with self._lock:
            self._closing = True
        self._worker.wake()
        await asyncio.to_thread(self._idle.wait, 30)
        self._worker.remove(self)
        self._runner.model = None  # the worker has let go of this harness

    # --- the worker's side -----------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox) or self._scheduler.has_work

    def step(self) -> None:
        batch = self._schedule()
        posts: Posts = []
        for seq in batch.cancelled:
            self._finish(seq, "cancelled", posts)
        self._runner.keep(batch.kept)
        try:
            with torch.inference_mode():  # sampling edits the model's logits in place
                self._run(batch, posts)
        except torch.OutOfMemoryError as exc:
            self._fail_running(f"generation ran out of memory: {exc}", posts)
        except Exception as exc:
            if self._device.type == "cuda":
                raise  # the worker fails the whole device
            log.exception("a step of %s failed", self.name)
            self._fail_running(f"generation failed: {type(exc).__name__}: {exc}", posts)
        self._runner.keep(self._scheduler.retire())
        cached_tokens = self._runner.count_cached_tokens()
        with self._lock:
            self._publish(cached_tokens)
        self._post(posts)
        with self._lock:  # with the inbox, so a sequence submitted meanwhile keeps it clear
            if not self._inbox and not self._scheduler.has_work:
                self._idle.set()

    def _schedule(self) -> Batch:
        """Take the inbox (when closing, cancel all), schedule and publish, under the lock:
        the figures read meanwhile count each sequence once, submitted, waiting or running
        (a joining one counts as running during its prefill)."""
        with self._lock:
            while self._inbox:
                self._scheduler.add(self._inbox.popleft())
            if self._closing:
                self._scheduler.cancel_all()
            batch = self._scheduler.schedule()
            self._publish(self._status.cached_tokens)  # the cache is as the last step left it
        return batch

    def _publish(self, cached_tokens: int) -> None:
        """Replace the status the event loop reads; call under the lock."""
        s = self._scheduler
        self._status = EngineStatus(s.num_running, s.num_waiting, cached_tokens, s.oldest_arrival)

    def _run(self, batch: Batch, posts: Posts) -> None:
        """One decode for every running row, then one prefill for the joining ones."""
        if batch.decode:
            logits = self._runner.decode(batch.decode)
            self._sample_and_post(logits, batch.decode, posts)
        if batch.prefill:
            now = time.monotonic()
            for seq in batch.prefill:
                self.stats.queued(now - seq.arrival_time)
                if not seq.request.params.is_greedy:
                    seq.generator = make_generator(seq.request.params.seed, self._device)
            logits = self._runner.prefill(batch.prefill)
            self._sample_and_post(logits, batch.prefill, posts)

    def fail(self, reason: str) -> None:
        """The device is gone (on the worker thread): end every sequence, refuse more."""
        self._failure = reason
        posts: Posts = []
        with self._lock:
            seqs = [*self._inbox]
            self._inbox.clear()
        seqs += self._scheduler.drain()
        for seq in seqs:
            if not seq.is_finished:
                self._error(seq, reason, posts)
        self._runner.keep([])  # drops the cache without a tensor op on the broken device
        with self._lock:
            self._publish(0)
        self._post(posts)
        self._idle.set()

    def _sample_and_post(self, logits: torch.Tensor, seqs: list[Sequence], posts: Posts) -> None:
        # logits: [B, V] for ``seqs`` in order (one cancelled since the schedule is decoded
        # once more and dropped at the next step)
        tokens = sample_next(logits, seqs)
        for i, seq in enumerate(seqs):
            output = seq.request.output
            forced = output.forced_next()  # a spent thinking budget, a forced call
            tokens[i] = forced if forced is not None else output.redirect(tokens[i])
        wanted = [s.request.params.logprobs for s in seqs]
        found = (
            token_logprobs(logits, tokens, wanted) if any(w is not None for w in wanted) else None
        )
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            events = self._postprocess(seq, token, now)
            if found is not None and found[i] is not None:
                events.insert(0, self._logprob_event(seq, token, found[i]))
            if events:
                posts.append((seq, events, seq.num_completion_tokens))

    def _postprocess(self, seq: Sequence, token: int, now: float) -> list[InferenceEvent]:
        request, params = seq.request, seq.request.params
        seq.output_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = now
            self.stats.first_token(now - seq.arrival_time)
        else:
            self.stats.token_gap(now - seq.last_token_time)
        seq.last_token_time = now
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
                # A call with no closing token is whole only if generation ended on its own.
                events.extend(request.output.finish(seq.finish_reason != "length"))
            events.append(self._done(seq, seq.finish_reason))
            seq.status = SequenceStatus.FINISHED
            self.stats.finished(seq, now)
        return events

    def _logprob_event(self, seq: Sequence, token: int, found: Any) -> TokenLogprob:
        text = seq.request.token_text or str
        chosen, top = found
        return TokenLogprob(text(token), chosen, tuple((text(t), lp) for t, lp in top))

    def _finish(self, seq: Sequence, reason: FinishReason, posts: Posts) -> None:
        seq.finish_reason = reason
        seq.status = SequenceStatus.FINISHED
        self.stats.finished(seq, time.monotonic())
        posts.append((seq, [self._done(seq, reason)], seq.num_completion_tokens))

    def _error(self, seq: Sequence, message: str, posts: Posts) -> None:
        seq.finish_reason = "error"
        seq.status = SequenceStatus.FINISHED
        posts.append((seq, [Error(message)], seq.num_completion_tokens))

    def _fail_running(self, message: str, posts: Posts) -> None:
        """End every running sequence (joining ones too) that this step left unfinished."""
        for seq in self._scheduler.running:
            if not seq.is_finished:
                self._error(seq, message, posts)

    def _post(self, posts: Posts) -> None:
        if not posts or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(_dispatch, posts)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            for seq, _, _ in posts:
                seq.cancel()

    @staticmethod
    def _done(seq: Sequence, reason: FinishReason) -> Done:
        return Done(
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_completion_tokens,
            stop_reason=seq.stop_reason,
            reasoning_tokens=seq.request.output.reasoning_tokens,
        )
