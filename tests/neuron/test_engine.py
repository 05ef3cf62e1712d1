"""The continuous-batching engine in-process, on the tiny model: what a batch must not change."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from cortex.errors import Overloaded
from cortex.neuron import loader
from cortex.neuron.devices import discover
from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.engine.harness import TransformersHarness
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.wire.events import Done, Error, InferenceEvent, Text, TokenLogprob
from cortex.neuron.wire.output import TextOutput

PROMPTS = [
    "Tell me about the river.",
    "Write one word.",
    "A much longer prompt: describe the city, its people, the weather and the long history of it.",
    "Hi",
]


@pytest.fixture(scope="module")
def weights(tiny_model: Path) -> loader.LoadedWeights:
    device = discover()[0]
    return loader.load_weights(tiny_model, device, torch.float32)


@pytest.fixture
async def engine(weights: loader.LoadedWeights) -> AsyncIterator[Any]:
    """``engine(**limits)`` → a harness on its own device worker, closed after the test."""
    made: list[tuple[TransformersHarness, DeviceWorker]] = []

    def make(**limits: Any) -> TransformersHarness:
        worker = DeviceWorker(torch.device("cpu"))
        harness = TransformersHarness(
            weights.model,
            torch.device("cpu"),
            worker,
            max_model_len=weights.context_length,
            **limits,
        )
        made.append((harness, worker))
        return harness

    yield make
    for harness, worker in made:
        await harness.aclose()
        await asyncio.to_thread(worker.close)


def _request(
    weights: loader.LoadedWeights, prompt: str, stops: tuple[str, ...] = (), **params: Any
) -> InferenceRequest:
    tokenizer = weights.tokenizer
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    defaults: dict[str, Any] = {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
    return InferenceRequest(
        request_id=prompt,
        prompt_ids=list(ids),
        params=SamplingParams(**{**defaults, **params}),
        output=TextOutput(tokenizer, stops),
        eos_token_ids=weights.eos_token_ids,
        token_text=lambda t: str(tokenizer.decode([t])),
    )


async def _collect(stream: Any) -> tuple[str, Done, list[InferenceEvent]]:
    events = [event async for event in stream]
    done = events[-1]
    if isinstance(done, Error):
        raise AssertionError(done.message)
    assert isinstance(done, Done)
    text = "".join(e.text for e in events if isinstance(e, Text))
    return text, done, events


async def test_greedy_output_is_the_same_alone_and_in_a_batch_joined_mid_flight(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    alone = engine()
    expected = [await _collect(alone.submit(_request(weights, p, max_tokens=24))) for p in PROMPTS]

    batched = engine(max_num_seqs=8)
    streams = []
    for prompt in PROMPTS:
        stream = batched.submit(_request(weights, prompt, max_tokens=24))
        streams.append(stream)
        # Let the sequences already running get a few tokens ahead before the next joins.
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*(_collect(s) for s in streams))
    assert [(text, done.completion_tokens) for text, done, _ in results] == [
        (text, done.completion_tokens) for text, done, _ in expected
    ]


async def test_a_seed_reproduces_a_sample_alone_and_in_a_batch(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=8)
    seeded = {"temperature": 1.0, "seed": 1234, "max_tokens": 20}
    alone = await _collect(harness.submit(_request(weights, PROMPTS[0], **seeded)))
    crowd = [
        harness.submit(_request(weights, p, temperature=1.0, max_tokens=20)) for p in PROMPTS[1:]
    ]
    again = harness.submit(_request(weights, PROMPTS[0], **seeded))
    results = await asyncio.gather(_collect(again), *(_collect(s) for s in crowd))
    assert results[0][0] == alone[0]
    other_seed = await _collect(
        harness.submit(_request(weights, PROMPTS[0], **{**seeded, "seed": 9}))
    )
    assert other_seed[0] != alone[0]


async def test_sampling_fields_move_the_output_as_they_should(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=8)
    greedy, _, _ = await _collect(harness.submit(_request(weights, PROMPTS[0])))
    top_k_one, _, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], temperature=1.0, top_k=1, seed=3))
    )
    assert top_k_one == greedy  # one candidate left: sampling is greedy
    tiny_top_p, _, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], temperature=1.0, top_p=1e-6, seed=4))
    )
    assert tiny_top_p == greedy
    high_min_p, _, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], temperature=1.0, min_p=1.0, seed=5))
    )
    assert high_min_p == greedy
    penalised, _, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], repetition_penalty=10.0, max_tokens=24))
    )
    assert penalised != greedy
    # min_tokens: EOS cannot end the reply early.
    request = _request(weights, PROMPTS[1], ignore_eos=False, min_tokens=12, max_tokens=12)
    _, done, _ = await _collect(harness.submit(request))
    assert (done.completion_tokens, done.finish_reason) == (12, "length")
    # stop_token_ids: the first generated token of the greedy reply ends it at once.
    first = weights.tokenizer.encode(greedy, add_special_tokens=False)[0]
    _, done, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], stop_token_ids=(first,)))
    )
    assert (done.completion_tokens, done.finish_reason, done.stop_reason) == (1, "stop", first)


async def test_stop_strings_across_token_boundaries(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine()
    # Seeded sampling: the untrained model's greedy reply is only newlines.
    sampled = {"temperature": 1.0, "seed": 11, "max_tokens": 24}
    reply, _, events = await _collect(harness.submit(_request(weights, PROMPTS[0], **sampled)))
    assert reply
    pieces = [e.text for e in events if isinstance(e, Text)]
    # A stop string made of the end of one delta and the start of the next.
    at = next(i for i in range(1, len(pieces)) if pieces[i - 1].strip() and pieces[i].strip())
    stop = pieces[at - 1][-1] + pieces[at][0]
    text, done, _ = await _collect(
        harness.submit(_request(weights, PROMPTS[0], stops=(stop,), **sampled))
    )
    assert done.stop_reason == stop
    assert text == reply[: reply.index(stop)]


async def test_logprobs_come_with_each_token(engine: Any, weights: loader.LoadedWeights) -> None:
    harness = engine()
    _, _, events = await _collect(
        harness.submit(_request(weights, PROMPTS[0], logprobs=3, max_tokens=6))
    )
    entries = [e for e in events if isinstance(e, TokenLogprob)]
    assert len(entries) == 6
    for entry in entries:
        assert len(entry.top) == 3
        assert entry.logprob <= 0
        assert entry.top[0][1] >= entry.logprob - 1e-6  # greedy picks the most likely


async def test_cancelled_sequences_free_their_slots_and_nothing_leaks(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=4)
    rng = random.Random(0)

    async def leave_early(i: int) -> None:
        stream = harness.submit(_request(weights, PROMPTS[i % 4], max_tokens=60000))
        async for _ in stream:
            if rng.random() < 0.3:
                break
        await stream.aclose()

    for _ in range(3):
        await asyncio.gather(*(leave_early(i) for i in range(100)))
    for _ in range(200):
        if (harness.num_running, harness.num_waiting, harness.cached_tokens) == (0, 0, 0):
            break
        await asyncio.sleep(0.01)
    assert (harness.num_running, harness.num_waiting, harness.cached_tokens) == (0, 0, 0)
    # The slots are free: a new request is served at once.
    _, done, _ = await _collect(harness.submit(_request(weights, PROMPTS[1])))
    assert done.completion_tokens == 16


async def test_a_full_queue_refuses_with_retry_after(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=1, max_queue=1)
    long = replace(_request(weights, PROMPTS[0]).params, max_tokens=60000)

    def submit() -> Any:
        request = _request(weights, PROMPTS[0])
        request.params = long
        return harness.submit(request)

    # One runs, one may wait: a third finds the queue full.
    streams = [submit()]
    await streams[0].__anext__()  # its first token: it is running
    streams.append(submit())
    with pytest.raises(Overloaded) as info:
        submit()
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "1"
    for stream in streams:
        await stream.aclose()


async def test_status_counts_running_and_waiting_and_closing_cancels_both(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=1)
    first = _request(weights, PROMPTS[0], max_tokens=60000)
    streams = [harness.submit(first), harness.submit(_request(weights, PROMPTS[1]))]
    await streams[0].__anext__()  # its first token: it runs, the other waits for its slot
    assert (harness.num_running, harness.num_waiting) == (1, 1)
    assert harness.cached_tokens >= len(first.prompt_ids)
    assert harness.queue_wait() > 0

    await harness.aclose()
    ends = [[e async for e in stream][-1] for stream in streams]
    assert [e.finish_reason for e in ends if isinstance(e, Done)] == ["cancelled", "cancelled"]
    assert (harness.num_running, harness.num_waiting, harness.cached_tokens) == (0, 0, 0)


class _FailingOutput(TextOutput):
    """An output whose own part of the step raises after ``after`` tokens, at ``where``
    (``redirect``: while the token is chosen; ``feed``: in stop handling and detokenizing)."""

    def __init__(self, tokenizer: Any, where: str, after: int) -> None:
        super().__init__(tokenizer)
        self.where, self.left = where, after

    def _tick(self, where: str) -> None:
        if where == self.where:
            self.left -= 1
            if self.left < 0:
                raise RuntimeError(f"broken {where}")

    def redirect(self, token_id: int) -> int:
        self._tick("redirect")
        return super().redirect(token_id)

    def feed(self, token_id: int) -> tuple[list[InferenceEvent], str | None]:
        self._tick("feed")
        return super().feed(token_id)


async def _end(stream: Any) -> InferenceEvent:
    events: list[InferenceEvent] = [event async for event in stream]
    return events[-1]


async def test_one_sequence_that_fails_fails_alone_and_the_batch_goes_on(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    alone = engine()
    expected = [await _collect(alone.submit(_request(weights, p, max_tokens=24))) for p in PROMPTS]

    batched = engine(max_num_seqs=8)
    broken = []
    for where, after in [("redirect", 0), ("redirect", 5), ("feed", 0), ("feed", 7)]:
        request = _request(weights, PROMPTS[0], max_tokens=24)
        request.output = _FailingOutput(weights.tokenizer, where, after)
        broken.append(request)
    requests = [_request(weights, p, max_tokens=24) for p in PROMPTS]
    # The broken ones join with the good ones, in the same prefill and mid-flight.
    streams = [batched.submit(r) for r in [*requests[:2], broken[0], broken[2]]]
    await asyncio.sleep(0.02)
    streams += [batched.submit(r) for r in [broken[1], *requests[2:], broken[3]]]
    good = [streams[0], streams[1], streams[5], streams[6]]
    bad = [streams[2], streams[3], streams[4], streams[7]]
    results = await asyncio.gather(*(_collect(s) for s in good))
    assert [(text, done.completion_tokens) for text, done, _ in results] == [
        (text, done.completion_tokens) for text, done, _ in expected
    ]
    ends = await asyncio.gather(*(_end(s) for s in bad))
    assert all(isinstance(e, Error) for e in ends), ends
    messages = [e.message for e in ends if isinstance(e, Error)]
    assert "broken redirect" in messages[0]
    assert "broken feed" in messages[1]
    assert all("this request" in m for m in messages)
    # Nothing is left behind: the failed sequences gave their rows back.
    for _ in range(200):
        if (batched.num_running, batched.cached_tokens) == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert (batched.num_running, batched.num_waiting, batched.cached_tokens) == (0, 0, 0)


async def test_values_past_the_edge_never_fail_a_batch(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    """What the HTTP edge refuses, the engine takes without failing anyone if it gets it:
    a top_k or seed past 64 bits, stop ids outside the vocabulary with min_tokens, a denormal
    temperature (greedy)."""
    harness = engine(max_num_seqs=8)
    greedy = await _collect(harness.submit(_request(weights, PROMPTS[0])))
    odd: list[dict[str, Any]] = [
        {"temperature": 1.0, "top_k": 2**63, "seed": 1},
        {"temperature": 1.0, "seed": 2**64 + 5},
        {"temperature": 1.0, "seed": -(2**63)},
        {"ignore_eos": False, "min_tokens": 4, "stop_token_ids": (10**6, 2**70)},
        {"temperature": 1e-320},
        {"logprobs": 10**6, "max_tokens": 2},
    ]
    streams = [harness.submit(_request(weights, PROMPTS[0], **params)) for params in odd]
    streams.append(harness.submit(_request(weights, PROMPTS[0])))
    results = await asyncio.gather(*(_collect(s) for s in streams))
    assert results[4][0] == greedy[0]  # a denormal temperature is greedy
    assert results[-1][0] == greedy[0]
    # A seed is taken modulo 2**64: the same draw as its residue.
    residue = await _collect(harness.submit(_request(weights, PROMPTS[0], temperature=1.0, seed=5)))
    assert residue[0] == results[1][0]


async def test_a_request_the_engine_must_not_run_ends_alone_at_submit(
    engine: Any, weights: loader.LoadedWeights
) -> None:
    harness = engine(max_num_seqs=8)
    running = harness.submit(_request(weights, PROMPTS[0], max_tokens=24))
    vocab = len(weights.tokenizer)
    empty = _request(weights, PROMPTS[1])
    empty.prompt_ids = []
    outside = _request(weights, PROMPTS[1])
    outside.prompt_ids = [*outside.prompt_ids, vocab]
    refused = [
        (empty, "prompt is empty"),
        (outside, "vocabulary"),
        (_request(weights, PROMPTS[1], temperature=float("nan")), "temperature"),
        (_request(weights, PROMPTS[1], temperature=float("inf")), "temperature"),
        (_request(weights, PROMPTS[1], top_p=0.0), "top_p"),
        (_request(weights, PROMPTS[1], repetition_penalty=0.0), "repetition_penalty"),
        (_request(weights, PROMPTS[1], presence_penalty=float("nan")), "presence_penalty"),
        (_request(weights, PROMPTS[1], stop_token_ids=(-1,)), "stop_token_ids"),
        (_request(weights, PROMPTS[1], max_tokens=0), "max_tokens"),
    ]
    for request, field in refused:
        end = await asyncio.wait_for(_end(harness.submit(request)), 5)
        assert isinstance(end, Error), (field, end)
        assert field in end.message
    _text, done, _ = await _collect(running)
    assert done.completion_tokens == 24


async def test_a_prompt_that_fails_its_prefill_fails_alone(weights: loader.LoadedWeights) -> None:
    """The batched prefill fails (a token id past the embedding); the joining sequences are
    prefilled one by one in blocks allocated afresh, the culprit's blocks are freed and the
    others decode as they would alone."""
    from cortex.neuron.engine.isolation import prefill_rows
    from cortex.neuron.engine.runner import Runner, make_runner
    from cortex.neuron.engine.scheduler import Scheduler
    from cortex.neuron.engine.sequence import Sequence

    class _Sink:
        def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
            pass

    def engine() -> tuple[Runner, Scheduler]:
        runner, blocks, _ = make_runner(
            weights.model,
            torch.device("cpu"),
            max_model_len=weights.context_length,
            max_num_seqs=8,
            kv_cache_bytes=None,
            block_size=16,
            prefix_caching=True,
        )
        return runner, Scheduler(8, 8192, blocks)

    def greedy(runner: Runner, scheduler: Scheduler, logits: torch.Tensor) -> list[list[int]]:
        seqs, out = list(scheduler.running), []
        for _ in range(6):
            tokens = logits.argmax(dim=-1).tolist()
            for s, token in zip(seqs, tokens, strict=True):
                s.output_ids.append(int(token))
            out.append(tokens)
            assert scheduler.schedule().decode == seqs
            logits = runner.decode(seqs)
            scheduler.blocks.commit()
        return [[step[i] for step in out] for i in range(len(seqs))]

    def seq(prompt: str) -> Sequence:
        return Sequence(request=_request(weights, prompt), sink=_Sink())

    bad = seq(PROMPTS[1])
    bad.request.prompt_ids = [*bad.request.prompt_ids, 10**6]
    runner, scheduler = engine()
    batch = [seq(PROMPTS[0]), bad, seq(PROMPTS[2])]
    with torch.inference_mode():
        for s in batch:
            scheduler.add(s)
        assert scheduler.schedule().prefill == batch
        joined, logits, failed = prefill_rows(runner, scheduler, batch)
        assert joined == [batch[0], batch[2]] == scheduler.running
        assert [s for s, _ in failed] == [bad]
        assert isinstance(failed[0][1], IndexError)
        assert bad.table is None
        assert not scheduler.blocks.pending
        assert logits is not None
        together = greedy(runner, scheduler, logits)
        alone = []
        for s in (seq(PROMPTS[0]), seq(PROMPTS[2])):
            single, alone_scheduler = engine()
            alone_scheduler.add(s)
            alone_scheduler.schedule()
            first = single.prefill([s])
            alone += greedy(single, alone_scheduler, first)
    assert together == alone
