"""``EmbeddingHarness``: one embedding model's forward passes, run by its device's worker.

``embed()`` (event loop) queues a job: one request's inputs as token ids. Each ``step()``
(the device worker's thread) takes the inbox, then the inputs waiting, oldest request first,
as many as hold ``max_batch_tokens`` tokens (one at least), so that inputs of concurrent
requests share the step; it sorts them by length and runs them in batches of at most
``max_batch_size`` inputs and ``max_batch_tokens`` padded tokens, as sentence-transformers
sorts and batches (its ``batch_size`` is 32), so that short inputs are not padded to long
ones. Pooling, normalisation and ``dimensions`` happen on the device; a finished request
gets a float32 CPU tensor back through ``call_soon_threadsafe``.

Who owns what: the worker owns ``_pending`` and every tensor; the event loop owns the
futures. ``_inbox``, ``_closing``, ``_status`` and ``_jobs_waiting`` are shared, under
``_lock``, as in ``TransformersHarness``. A cancelled request (its client left) is dropped
at the next step. A forward that fails fails the requests in that batch (on CUDA, a
non-memory error fails the device, as the worker decides); ``aclose()`` fails what is left
and leaves the worker.

It is a ``Harness`` for the registry's figures (running and waiting inputs, the oldest
wait); it generates nothing: ``submit`` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from cortex.errors import EngineFailure, InvalidRequest, NeuronUnavailable, Overloaded
from cortex.neuron.embedding import pooling
from cortex.neuron.embedding.spec import EmbeddingSpec
from cortex.neuron.engine.base import InferenceRequest, InferenceStream
from cortex.neuron.engine.stats import EngineStats, EngineStatus
from cortex.neuron.engine.worker import DeviceWorker

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Job:
    """One request: its inputs, and the rows the worker has pooled for them so far."""

    inputs: list[list[int]]
    dimensions: int | None
    future: asyncio.Future[torch.Tensor]
    loop: asyncio.AbstractEventLoop
    arrival: float = field(default_factory=time.monotonic)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    started: bool = False
    cancelled: bool = False  # set by the event loop; the worker drops the job

    def settle(self, result: torch.Tensor | BaseException) -> None:
        """Hand the result (or the error) to the event loop; any thread."""
        # RuntimeError: the event loop is gone, and nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future[torch.Tensor], result: torch.Tensor | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class EmbeddingHarness:
    def __init__(
        self,
        model: Any,
        spec: EmbeddingSpec,
        device: torch.device,
        worker: DeviceWorker,
        *,
        pad_id: int,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 32,
        max_queue: int = 256,
        stats: EngineStats | None = None,
        name: str = "model",
    ) -> None:
        self.model = model
        self.spec = spec
        self.name = name
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.stats = stats or EngineStats()
        embeddings = model.get_input_embeddings()
        self.vocab_size: int = int(embeddings.num_embeddings)
        # The width of a vector: the hidden size, once per pooling mode.
        self.width: int = int(embeddings.embedding_dim) * len(spec.pooling)
        self._device = device
        self._worker = worker
        self._failure: str | None = None
        self._pending: deque[tuple[_Job, int]] = deque()  # the worker's: (job, input index)
        self._lock = threading.Lock()
        self._inbox: deque[_Job] = deque()
        self._closing = False
        self._status = EngineStatus()
        self._jobs_waiting = 0  # requests with inputs pending, as of the last step
        self._idle = threading.Event()
        self._idle.set()
        worker.add(self)

    # --- status (any thread) ------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return self._status.num_running

    @property
    def num_waiting(self) -> int:
        with self._lock:
            return self._status.num_waiting + sum(len(job.inputs) for job in self._inbox)

    def queue_wait(self) -> float:
        with self._lock:
            oldest = self._status.oldest_arrival
            if oldest is None and self._inbox:
                oldest = self._inbox[0].arrival
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    @property
    def cached_tokens(self) -> int:
        return 0

    @property
    def status(self) -> EngineStatus:
        return self._status

    @property
    def failure(self) -> str | None:
        return self._failure

    # --- the event loop's side ----------------------------------------------------------

    def check_room(self) -> None:
        """Raise ``Overloaded`` (429) when ``max_queue`` requests already wait."""
        with self._lock:
            waiting = len(self._inbox) + self._jobs_waiting
        if waiting >= self.max_queue:
            raise Overloaded(
                f"{self.name} has {waiting} embedding requests waiting; try again shortly",
                headers={"Retry-After": "1"},
            )

    def submit(self, request: InferenceRequest) -> InferenceStream:
        raise InvalidRequest(
            f"The model {self.name!r} is an embedding model; it does not generate text",
            param="model",
        )

    async def embed(self, inputs: list[list[int]], dimensions: int | None) -> torch.Tensor:
        """The vectors [len(inputs), width or dimensions] (float32, CPU), in input order.

        Token ids must be in the vocabulary (checked before). Cancelling this cancels the job
        at the worker's next step."""
        loop = asyncio.get_running_loop()
        job = _Job(inputs, dimensions, loop.create_future(), loop)
        with self._lock:  # with the inbox, so that no job comes in behind aclose()
            if self._failure is not None or self._closing:
                raise NeuronUnavailable(self._failure or f"{self.name} is being unloaded")
            self._inbox.append(job)
            self._idle.clear()
        self._worker.wake()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._worker.wake()
            raise

    async def aclose(self) -> None:
        """Fail every job still queued, wait until the worker holds none, leave the worker."""
        with self._lock:
            self._closing = True
        self._worker.wake()
        await asyncio.to_thread(self._idle.wait, 30)
        self._worker.remove(self)

    # --- the worker's side --------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._pending)

    def step(self) -> None:
        batch = self._take()
        if batch:
            try:
                with torch.inference_mode():
                    self._run(batch)
            except torch.OutOfMemoryError as exc:
                self._fail_batch(batch, f"embedding ran out of memory: {exc}")
            except Exception as exc:
                if self._device.type == "cuda":
                    self._fail_batch(batch, f"embedding failed: {type(exc).__name__}: {exc}")
                    raise  # the worker fails the whole device
                log.exception("a batch of %s failed", self.name)
                self._fail_batch(batch, f"embedding failed: {type(exc).__name__}: {exc}")
        with self._lock:
            self._publish(running=0)
            if not self._inbox and not self._pending:
                self._idle.set()

    def _take(self) -> list[tuple[_Job, int]]:
        """Take the inbox, drop what was cancelled (all of it when closing) and pick this
        step's inputs: the oldest, as many as hold the token budget (one at least)."""
        with self._lock:
            while self._inbox:
                job = self._inbox.popleft()
                order = sorted(range(len(job.inputs)), key=lambda i: len(job.inputs[i]))
                self._pending.extend((job, i) for i in order)
            closing = self._closing
        if closing:
            for job in {job for job, _ in self._pending}:
                job.settle(NeuronUnavailable(f"{self.name} was unloaded"))
            self._pending.clear()
        elif any(job.cancelled for job, _ in self._pending):
            self._pending = deque(item for item in self._pending if not item[0].cancelled)
        batch: list[tuple[_Job, int]] = []
        tokens = 0
        while self._pending:
            job, index = self._pending[0]
            tokens += len(job.inputs[index])
            if batch and tokens > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
        with self._lock:
            self._publish(running=len(batch))
        return batch

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        now = time.monotonic()
        for job, _ in batch:
            if not job.started:
                job.started = True
                self.stats.queued(now - job.arrival)
        for chunk in self._chunks(batch):
            ids = [job.inputs[index] for job, index in chunk]
            input_ids, mask = pooling.pad(ids, self.pad_id, self._device)  # [B, S]
            hidden = pooling.forward(self.model, input_ids, mask)  # [B, S, H]
            vectors = pooling.pool(hidden, mask, self.spec.pooling)  # [B, width]
            for row, (job, index) in enumerate(chunk):
                job.rows[index] = vectors[row]
                if len(job.rows) == len(job.inputs):
                    self._answer(job)

    def _chunks(self, batch: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """The step's inputs sorted by length, cut into forward passes of at most
        ``max_batch_size`` inputs and ``max_batch_tokens`` padded tokens."""
        ordered = sorted(batch, key=lambda item: len(item[0].inputs[item[1]]))
        chunks: list[list[tuple[_Job, int]]] = [[]]
        for job, index in ordered:
            chunk = chunks[-1]
            padded = len(job.inputs[index]) * (len(chunk) + 1)  # the longest comes last
            if chunk and (len(chunk) == self.max_batch_size or padded > self.max_batch_tokens):
                chunks.append(chunk := [])
            chunk.append((job, index))
        return chunks

    def _answer(self, job: _Job) -> None:
        stacked = torch.stack([job.rows[i] for i in range(len(job.inputs))])  # [N, width]
        result = pooling.finish(stacked, job.dimensions, self.spec.normalize).cpu()
        job.rows.clear()
        tokens = sum(len(ids) for ids in job.inputs)
        self.stats.embedded(len(job.inputs), tokens, time.monotonic() - job.arrival)
        job.settle(result)

    def _fail_batch(self, batch: list[tuple[_Job, int]], message: str) -> None:
        """Fail the batch's jobs, and their inputs still pending."""
        failed = {job for job, _ in batch}
        for job in failed:
            job.rows.clear()
            job.settle(EngineFailure(message))
        self._pending = deque(item for item in self._pending if item[0] not in failed)

    def fail(self, reason: str) -> None:
        """The device is gone (on the worker thread): fail every job, refuse more."""
        self._failure = reason
        with self._lock:
            jobs = {*self._inbox, *(job for job, _ in self._pending)}
            self._inbox.clear()
        self._pending.clear()
        for job in jobs:
            job.settle(EngineFailure(reason))
        with self._lock:
            self._publish(running=0)
        self._idle.set()

    def _publish(self, running: int) -> None:
        """Replace the figures the event loop reads; call under the lock."""
        jobs = {job for job, _ in self._pending}
        self._jobs_waiting = len(jobs)
        oldest = min((job.arrival for job in jobs), default=None)
        self._status = EngineStatus(
            num_running=running, num_waiting=len(self._pending), oldest_arrival=oldest
        )
