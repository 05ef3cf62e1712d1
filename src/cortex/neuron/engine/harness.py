"""``TransformersHarness``: continuous batching for one model, stepped by its device's worker.

``step()`` reads like the engine it is: take the inbox and schedule → run the model (one
batched decode for every running sequence, one batched prefill for those joining) →
sample → postprocess (detokenize, check stops, emit events) → retire the finished →
publish the status.

Who owns what, on which thread:

* The device worker's thread owns the ``Scheduler`` (the waiting and running
  sequences and the KV blocks they hold), the runner (the model and its paged KV cache)
  and every tensor. Nothing else reads them.
* The event loop owns the ``_Stream``s. It hands new sequences over through
  ``_inbox`` and asks for the end through ``_closing``; both are touched only under
  ``_lock``, the one thing the two threads share besides ``Sequence.cancel()``.
* The worker publishes ``_status``, an ``EngineStatus`` of plain numbers, under the lock
  when it takes the inbox and schedules, and at the end of each step. ``num_running``,
  ``num_waiting``, ``queue_wait()``, ``cached_tokens`` and ``check_room()`` read it
  (plus the inbox, for sequences submitted since), so the event loop never touches a
  tensor or a worker-owned queue; their figures are as of the worker's last step.
* Events go to the event loop with one ``call_soon_threadsafe`` per step.

One sequence's fault fails that sequence alone (``isolation``): a request no batch should
run with is refused at ``submit``; a sampling, output or prefill error of one sequence ends
its stream with an ``Error`` and the others go on. Only what belongs to the whole batch (a
failed decode) fails every running sequence, and a device error fails the device.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import torch

from cortex.neuron.engine.base import InferenceRequest, InferenceStream
from cortex.neuron.engine.constrain import Masks, accept_rows
from cortex.neuron.engine.isolation import (
    check_request,
    check_room,
    is_device_error,
    logprob_rows,
    prefill_rows,
    sample_rows,
)
from cortex.neuron.engine.postprocess import forced_token, logprob_event, postprocess
from cortex.neuron.engine.runner import make_runner
from cortex.neuron.engine.sampling import make_generator
from cortex.neuron.engine.scheduler import Batch, Scheduler
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.stats import EngineStats, EngineStatus
from cortex.neuron.engine.stream import Posts, SequenceStream, dispatch
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.wire.events import Error, FinishReason

log = logging.getLogger(__name__)


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
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        prefix_caching: bool = True,
        stats: EngineStats | None = None,
        name: str = "model",
    ) -> None:
        self.name = name
        self.max_queue = max_queue
        self.stats = stats or EngineStats()
        self._device = device
        self._worker = worker
        self._runner, blocks, self.max_model_len = make_runner(
            model,
            device,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            kv_cache_bytes=kv_cache_bytes,
            block_size=block_size,
            prefix_caching=prefix_caching,
        )
        # A model the paged cache cannot serve runs one sequence at a time.
        seqs = max_num_seqs if self._runner.paged else 1
        self._scheduler = Scheduler(seqs, max_prefill_tokens, blocks)
        self.kv_cache_bytes = self._runner.kv_cache_bytes
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
        self._publish()
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
    def status(self) -> EngineStatus:
        return self._status

    @property
    def failure(self) -> str | None:
        return self._failure

    # --- the event loop's side -----------------------------------------------------------

    def check_room(self) -> None:
        """Raise ``Overloaded`` (429, Retry-After) when no more sequences may wait."""
        check_room(self.name, self.num_waiting, self.max_queue)

    def submit(self, request: InferenceRequest) -> InferenceStream:
        """Queue a sequence; raises ``Overloaded`` (429) when the waiting queue is full.

        A request the engine must not run (``check_request``) gets its stream ended with
        an ``Error`` here and never reaches the worker."""
        self._loop = asyncio.get_running_loop()
        stream = SequenceStream(self._worker.wake)
        seq = Sequence(request=request, sink=stream)
        stream.seq = seq
        refused = self._failure or ("the model is being unloaded" if self._closing else None)
        refused = refused or check_request(request, self._runner.vocab_size, self.max_model_len)
        if refused is not None:
            stream.put([Error(refused)], 0)
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
        self._runner.close()  # the worker has let go of this harness

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
        try:
            with torch.inference_mode():  # sampling edits the model's logits in place
                self._run(batch, posts)
        except torch.OutOfMemoryError as exc:
            self._scheduler.blocks.forget_pending()
            self._fail_running(f"generation ran out of memory: {exc}", posts)
        except Exception as exc:
            self._scheduler.blocks.forget_pending()
            if self._device.type == "cuda":
                raise  # the worker fails the whole device
            log.exception("a step of %s failed", self.name)
            self._fail_running(f"generation failed: {type(exc).__name__}: {exc}", posts)
        self._scheduler.retire()
        if not self._scheduler.running:
            self._runner.release()
        with self._lock:
            self._publish()
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
            self._publish()
        return batch

    def _publish(self) -> None:
        """Replace the status the event loop reads; call under the lock (or before the
        worker knows the harness)."""
        self._status = self._scheduler.status(self.kv_cache_bytes)

    def _run(self, batch: Batch, posts: Posts) -> None:
        """One decode for every running sequence, then one prefill for the joining ones:
        together, else one by one, so that a prompt that fails fails alone."""
        if batch.decode:
            masks = Masks(batch.decode)  # the grammars' rows, beside the forward pass
            logits = self._runner.decode(batch.decode)
            self._scheduler.blocks.commit()
            self._sample_and_post(logits, batch.decode, posts, masks)
        if batch.prefill:
            now = time.monotonic()
            joining: list[Sequence] = []
            for seq in batch.prefill:
                if seq.preemptions == 0:
                    self.stats.queued(now - seq.arrival_time)
                try:
                    if not seq.request.params.is_greedy and seq.generator is None:
                        seq.generator = make_generator(seq.request.params.seed, self._device)
                except Exception as exc:
                    self._seq_failed(seq, "its seed", exc, posts)
                    continue
                joining.append(seq)
            masks = Masks(joining)
            joined, prefilled, failed = prefill_rows(self._runner, self._scheduler, joining)
            for seq, error in failed:
                self._seq_failed(seq, "its prompt", error, posts)
            if joined and prefilled is not None:
                self._sample_and_post(prefilled, joined, posts, masks)

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
        self._runner.release()
        with self._lock:
            self._publish()
        self._post(posts)
        self._idle.set()

    def _sample_and_post(
        self, logits: torch.Tensor, seqs: list[Sequence], posts: Posts, masks: Masks
    ) -> None:
        """Sample, steer, take logprobs and postprocess; a sequence whose own part of this
        fails ends with an Error (and leaves at ``retire``), the others go on.

        ``logits``: [B, V] for ``seqs`` in order (one cancelled since the schedule is
        decoded once more and dropped at the next step)."""
        for row, exc in masks.apply(logits, seqs).items():
            self._seq_failed(seqs[row], "its output grammar", exc, posts)
        sampled = sample_rows(logits, seqs, self._device)
        tokens = [self._steer(seq, token, posts) for seq, token in zip(seqs, sampled, strict=True)]
        for row, why in accept_rows(seqs, tokens).items():
            self._seq_failed(seqs[row], "its output grammar", ValueError(why), posts)
        found = logprob_rows(logits, seqs, tokens, self._device)
        now = time.monotonic()
        for seq, token, logprobs in zip(seqs, tokens, found, strict=True):
            if seq.is_finished:  # its sampling failed
                continue
            try:
                events = postprocess(seq, token, now, self.stats, self.max_model_len)
                if isinstance(logprobs, Exception):
                    raise logprobs
                if logprobs is not None:
                    events.insert(0, logprob_event(seq, token, *logprobs))
            except Exception as exc:
                self._seq_failed(seq, "its output", exc, posts)
                continue
            if events:
                posts.append((seq, events, seq.num_completion_tokens))

    def _steer(self, seq: Sequence, sampled: int | Exception, posts: Posts) -> int:
        """The token the sequence takes: its output's forced one (a spent thinking budget, a
        forced call), else the sampled one, redirected where the output says; -1 (and the
        sequence ended) when its sampling failed."""
        try:
            if isinstance(sampled, Exception):
                raise sampled
            forced = forced_token(seq, self.max_model_len)
            token = forced if forced is not None else seq.request.output.redirect(sampled)
            vocab = self._runner.vocab_size
            if token < 0 or (vocab is not None and token >= vocab):
                raise ValueError(f"token {token} is outside the model's vocabulary of {vocab}")
        except Exception as exc:
            self._seq_failed(seq, "its sampling", exc, posts)
            return -1
        return token

    def _finish(self, seq: Sequence, reason: FinishReason, posts: Posts) -> None:
        seq.finish_reason = reason
        seq.status = SequenceStatus.FINISHED
        self.stats.finished(seq, time.monotonic())
        posts.append((seq, [seq.done(reason)], seq.num_completion_tokens))

    def _error(self, seq: Sequence, message: str, posts: Posts) -> None:
        seq.finish_reason = "error"
        seq.status = SequenceStatus.FINISHED
        posts.append((seq, [Error(message)], seq.num_completion_tokens))

    def _seq_failed(self, seq: Sequence, part: str, exc: Exception, posts: Posts) -> None:
        """End one sequence whose own part of the step failed; a device error is raised on."""
        if is_device_error(exc, self._device):
            raise exc
        request_id = seq.request.request_id
        log.warning("request %s of %s failed on %s", request_id, self.name, part, exc_info=exc)
        if seq.finish_reason != "error":  # not already ended by an earlier part
            message = f"generation of this request failed on {part}: {type(exc).__name__}: {exc}"
            self._error(seq, message, posts)

    def _fail_running(self, message: str, posts: Posts) -> None:
        """End every running sequence (joining ones too) that this step left unfinished."""
        for seq in self._scheduler.running:
            if not seq.is_finished:
                self._error(seq, message, posts)

    def _post(self, posts: Posts) -> None:
        if not posts or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(dispatch, posts)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            for seq, _, _ in posts:
                seq.cancel()
