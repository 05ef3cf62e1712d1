"""``VllmHarness``: one model on vLLM's ``AsyncLLM``, behind the same seam as the
transformers engine.

cortex keeps everything that is its own: the prompt arrives as token ids it rendered,
and every token vLLM samples goes through the sequence's own output processor
(``postprocess``), so markers, tool calls, reasoning, stop strings and the dialects'
projections are the same on both engines. vLLM runs the model, batches, pages the KV
cache and samples.

Steering: the wire layer may force a token (a spent thinking budget, the rest of a forced
call's opening) or redirect the sampled one (the start of a forced call). vLLM cannot be
told that mid-request, so where the token taken differs from the one vLLM sampled, the
request is aborted there and continued as a new one whose prompt is the old prompt plus
everything taken so far; its prefix is in vLLM's prefix cache, so the continuation costs
about one step.

Everything here runs on the event loop: vLLM's ``AsyncLLM`` hands outputs to it, and its
engine core runs the model in its own process. Per sequence, a task drives the generation
and puts each step's events on the sequence's stream; closing the stream cancels the task,
which aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import time
from typing import Any

from cortex.neuron.engine.base import InferenceRequest, InferenceStream, SamplingParams
from cortex.neuron.engine.isolation import check_request, check_room
from cortex.neuron.engine.postprocess import forced_token, logprob_event, postprocess
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.stats import EngineStats, EngineStatus
from cortex.neuron.engine.stream import SequenceStream
from cortex.neuron.engine.vllm_figures import VllmFigures
from cortex.neuron.wire.events import Error, InferenceEvent

log = logging.getLogger(__name__)

_attempts = itertools.count()


class VllmHarness:
    """Generation for one model on its own ``AsyncLLM`` (engine core in a child process)."""

    def __init__(
        self,
        engine: Any,
        figures: VllmFigures,
        *,
        max_model_len: int,
        vocab_size: int | None,
        kv_cache_bytes: int,
        max_queue: int = 256,
        stats: EngineStats | None = None,
        name: str = "model",
        sleep_mode: bool = False,
    ) -> None:
        self.name = name
        self.engine = engine
        self.sleep_mode = sleep_mode
        self.max_model_len = max_model_len
        self.max_queue = max_queue
        self.kv_cache_bytes = kv_cache_bytes
        self.stats = stats or EngineStats()
        self._figures = figures
        self._vocab_size = vocab_size
        self._live: dict[Sequence, asyncio.Task[None]] = {}
        self._failure: str | None = None
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None

    # --- status (the event loop) ---------------------------------------------------------

    @property
    def num_running(self) -> int:
        return sum(1 for seq in self._live if seq.first_token_time is not None)

    @property
    def num_waiting(self) -> int:
        return len(self._live) - self.num_running

    def queue_wait(self) -> float:
        waiting = [s.arrival_time for s in self._live if s.first_token_time is None]
        return max(0.0, time.monotonic() - min(waiting)) if waiting else 0.0

    @property
    def cached_tokens(self) -> int:
        status = self.status
        return status.kv_blocks_used * status.kv_block_size

    @property
    def status(self) -> EngineStatus:
        waiting = [s.arrival_time for s in self._live if s.first_token_time is None]
        return self._figures.status(
            num_running=self.num_running,
            num_waiting=len(waiting),
            oldest_arrival=min(waiting) if waiting else None,
            kv_cache_bytes=self.kv_cache_bytes,
        )

    @property
    def failure(self) -> str | None:
        return self._failure

    def check_room(self) -> None:
        check_room(self.name, self.num_waiting, self.max_queue)

    # --- requests --------------------------------------------------------------------------

    def submit(self, request: InferenceRequest) -> InferenceStream:
        seq: Sequence | None = None

        def cancel() -> None:
            task = self._live.get(seq) if seq is not None else None
            if task is not None:
                task.cancel()

        stream = SequenceStream(cancel)
        seq = Sequence(request=request, sink=stream)
        stream.seq = seq
        refused = self._failure or ("the model is being unloaded" if self._closing else None)
        refused = refused or check_request(request, self._vocab_size, self.max_model_len)
        if refused is not None:
            stream.put([Error(refused)], 0)
            return stream
        self.check_room()
        loop = asyncio.get_running_loop()
        self._live[seq] = loop.create_task(self._drive(seq, stream))
        if self._watcher is None:
            self._watcher = loop.create_task(self._watch())
        return stream

    async def _watch(self, every: float = 1.0) -> None:
        """Fail the model once its engine is dead. A request handed to vLLM as its engine
        core dies can wait forever for an answer; this ends it (and every other) with why."""
        # vLLM offers no event for it: its ``errored`` flag is read once a second.
        while True:
            await asyncio.sleep(every)
            engine = self.engine
            if engine is None or self._closing:
                return
            if getattr(engine, "errored", False):
                break
        if not self._closing:
            self._failure = "the vLLM engine died: its engine core exited"
            log.error("%s: %s", self.name, self._failure)
            for task in list(self._live.values()):
                task.cancel()

    async def _drive(self, seq: Sequence, stream: SequenceStream) -> None:
        try:
            while not seq.is_finished:
                await self._generate(seq, stream)
        except asyncio.CancelledError:
            if self._failure is not None and not self._closing and not seq.is_finished:
                # Cancelled by ``_watch``: the engine is gone, which the client is told.
                seq.finish_reason, seq.status = "error", SequenceStatus.FINISHED
                stream.put([Error(self._failure)], seq.num_completion_tokens)
                return
            if not seq.is_finished:
                seq.finish_reason, seq.status = "cancelled", SequenceStatus.FINISHED
                self.stats.finished(seq, time.monotonic())
            raise
        except Exception as exc:
            failure = self._engine_failure(exc)
            if failure is not None:
                self._failure = failure
            log.warning("request %s of %s failed", seq.request.request_id, self.name, exc_info=exc)
            seq.finish_reason, seq.status = "error", SequenceStatus.FINISHED
            message = failure or f"generation failed: {type(exc).__name__}: {exc}"
            stream.put([Error(message)], seq.num_completion_tokens)
        finally:
            self._live.pop(seq, None)

    async def _generate(self, seq: Sequence, stream: SequenceStream) -> None:
        """One vLLM request: from the prompt plus everything taken so far, until the
        sequence ends or the token taken differs from the one sampled (then the caller
        continues it as a new request)."""
        from vllm.inputs import TokensPrompt

        prompt = seq.token_ids
        params = self._sampling(seq, len(prompt))
        if params is None:  # no room left in the context: it ends at its length
            stream.put(self._at_length(seq), seq.num_completion_tokens)
            return
        request_id = f"{seq.request.request_id}.{next(_attempts)}"
        generation = self.engine.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id)
        async with contextlib.aclosing(generation) as outputs:
            async for output in outputs:
                if seq.first_token_time is None:
                    self._queued(seq, output.metrics)
                completion = output.outputs[0]
                events, diverged = self._feed(seq, completion)
                if events:
                    stream.put(events, seq.num_completion_tokens)
                if seq.is_finished or diverged:
                    return
                if completion.finish_reason is not None:
                    # vLLM ended it where cortex would not (its own limit): end it here too.
                    stream.put(self._at_length(seq), seq.num_completion_tokens)
                    return

    def _feed(self, seq: Sequence, completion: Any) -> tuple[list[InferenceEvent], bool]:
        """Take the step's sampled tokens in order (steered where the output says); the
        events, and whether a taken token differs from the sampled one."""
        events: list[InferenceEvent] = []
        output = seq.request.output
        found = completion.logprobs or []
        now = time.monotonic()
        for i, sampled in enumerate(completion.token_ids):
            forced = forced_token(seq, self.max_model_len)
            token = forced if forced is not None else output.redirect(sampled)
            if seq.request.params.logprobs is not None and i < len(found) and token == sampled:
                events.append(self._logprob(seq, token, found[i]))
            events.extend(self._take(seq, token, now))
            if seq.is_finished:
                return events, False
            if token != sampled:
                # What is forced next is taken now, so the continuation samples afresh.
                while (
                    not seq.is_finished
                    and (forced := forced_token(seq, self.max_model_len)) is not None
                ):
                    events.extend(self._take(seq, forced, now))
                return events, True
        return events, False

    def _take(self, seq: Sequence, token: int, now: float) -> list[InferenceEvent]:
        """Take ``token`` into ``seq``; its grammar (vLLM's copy holds generation to it)
        follows, for the closing of cut-off JSON and for a continuation's grammar."""
        constraint = seq.request.constraint
        if constraint is not None and token not in seq.request.eos_token_ids:
            constraint.accept(token)
        return postprocess(seq, token, now, self.stats, self.max_model_len)

    def _queued(self, seq: Sequence, metrics: Any) -> None:
        """Its wait in vLLM's queue until the scheduler took it, from vLLM's own stamps (taken
        in its engine core: they are compared with each other only). ``submit`` hands the
        request to vLLM at once, so that is the whole wait."""
        queued = getattr(metrics, "queued_ts", 0.0)
        scheduled = getattr(metrics, "scheduled_ts", 0.0)
        if queued and scheduled >= queued:
            self.stats.queued(scheduled - queued)

    def _at_length(self, seq: Sequence) -> list[InferenceEvent]:
        """End ``seq`` at its length (vLLM stopped it, or the context is full)."""
        seq.finish_reason, seq.status = "length", SequenceStatus.FINISHED
        events = [*seq.request.output.finish(False), seq.done("length")]
        self.stats.finished(seq, time.monotonic())
        return events

    def _logprob(self, seq: Sequence, token: int, found: dict[int, Any]) -> InferenceEvent:
        """vLLM's logprobs of one position: the chosen token's and the ``k`` most likely."""
        k = seq.request.params.logprobs or 0
        chosen = found.get(token)
        ranked = sorted(found.items(), key=lambda item: item[1].rank)
        top = [(t, float(lp.logprob)) for t, lp in ranked[:k]]
        return logprob_event(seq, token, float(chosen.logprob) if chosen else 0.0, top)

    def _sampling(self, seq: Sequence, prompt_len: int) -> Any:
        """vLLM's ``SamplingParams`` for what is left of ``seq``; None when nothing is."""
        from vllm import SamplingParams as VllmParams
        from vllm.sampling_params import RequestOutputKind

        p: SamplingParams = seq.request.params
        done = seq.num_completion_tokens
        room = min(p.max_tokens - done, self.max_model_len - prompt_len)
        if room < 1:
            return None
        stops = set(p.stop_token_ids)
        if not p.ignore_eos:
            stops |= seq.request.eos_token_ids
        structured: dict[str, Any] = {}
        constraint = seq.request.constraint
        if constraint is not None:
            from vllm.sampling_params import StructuredOutputsParams

            # A continuation starts after a forced end of reasoning: the answer's grammar.
            grammar = constraint.answer if seq.output_ids else constraint.whole
            structured["structured_outputs"] = StructuredOutputsParams(grammar=grammar)
        return VllmParams(
            n=1,
            temperature=0.0 if p.is_greedy else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else 0,
            min_p=p.min_p,
            seed=p.seed,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            min_tokens=min(max(0, p.min_tokens - done), room),
            ignore_eos=p.ignore_eos,
            stop_token_ids=sorted(stops),
            max_tokens=room,
            logprobs=p.logprobs,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
            **structured,
        )

    @staticmethod
    def _engine_failure(exc: BaseException) -> str | None:
        """Why the engine is gone, when ``exc`` says it is (else None: one request failed)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError):
            return f"the vLLM engine died: {exc}"
        return None

    # --- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel every sequence (each aborts its request in vLLM), then shut the engine
        down: its processes exit and their memory goes back."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        tasks = list(self._live.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine, self.engine = self.engine, None
        await asyncio.to_thread(engine.shutdown)
        # Dropped now, while the interpreter is whole: collected at exit, its __del__ fails.
        del engine
        # vLLM kills an engine core that is slow to exit without waiting for it; reap it.
        multiprocessing.active_children()

    def sleep_refusal(self) -> str | None:
        return None if self.sleep_mode else "vLLM's sleep mode needs a CUDA device"

    async def sleep(self) -> None:
        """Park the weights in host memory and drop the KV cache (vLLM's sleep level 1);
        a request still running is aborted."""
        for task in list(self._live.values()):
            task.cancel()
        await self.engine.sleep(level=1)

    async def wake(self) -> None:
        await self.engine.wake_up()
