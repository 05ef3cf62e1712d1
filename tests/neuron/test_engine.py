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
