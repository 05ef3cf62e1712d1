"""The paged KV cache through a real forward pass of the tiny model: greedy output equals
transformers' own ``generate`` alone, in a batch, from a cached prefix and after a
preemption; a second prompt computes only its new tokens; cached blocks give way under
memory pressure, least recently used first; a batch that needs more KV than there is
completes every request; a model the paged attention cannot serve (gpt-oss's sinks) runs
one sequence at a time in transformers' own cache, as its ``generate`` would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cortex.neuron import loader
from cortex.neuron.devices import discover
from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.engine.harness import TransformersHarness
from cortex.neuron.engine.runner import PagedRunner, Runner, make_runner
from cortex.neuron.engine.scheduler import Scheduler
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.wire.events import Done, InferenceEvent, Text
from cortex.neuron.wire.output import TextOutput

CPU = torch.device("cpu")
BLOCK = 16


@pytest.fixture(scope="module")
def weights(tiny_model: Path) -> loader.LoadedWeights:
    return loader.load_weights(tiny_model, discover()[0], torch.float32)


class _Sink:
    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        pass


def _prompt(weights: loader.LoadedWeights, words: int, seed: int = 0) -> list[int]:
    """A chat prompt of a user message of ``words`` varied words."""
    vocabulary = ["river", "city", "stone", "light", "market", "winter", "song", "road"]
    text = " ".join(vocabulary[(seed + i * 7 + i // 3) % len(vocabulary)] for i in range(words))
    messages = [{"role": "user", "content": text}]
    tokenizer = weights.tokenizer
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def _request(weights: loader.LoadedWeights, ids: list[int], tokens: int) -> InferenceRequest:
    return InferenceRequest(
        request_id=str(len(ids)),
        prompt_ids=ids,
        params=SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
        output=TextOutput(weights.tokenizer),
    )


def _oracle(weights: loader.LoadedWeights, ids: list[int], tokens: int) -> list[int]:
    out = weights.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
    )
    return [int(t) for t in out[0, len(ids) :]]


def _engine(
    weights: loader.LoadedWeights, *, blocks: int | None = None, prefix_caching: bool = True
) -> tuple[Runner, Scheduler]:
    kv_bytes = None
    if blocks is not None:
        layers = weights.model.config.num_hidden_layers
        kv_heads, head_dim = weights.model.config.num_key_value_heads, weights.model.config.head_dim
        kv_bytes = blocks * BLOCK * layers * 2 * kv_heads * head_dim * 4
    runner, manager, _ = make_runner(
        weights.model,
        CPU,
        max_model_len=weights.context_length,
        max_num_seqs=8,
        kv_cache_bytes=kv_bytes,
        block_size=BLOCK,
        prefix_caching=prefix_caching,
    )
    _poison(runner)
    return runner, Scheduler(8, 8192, manager)


def _poison(runner: Runner) -> None:
    """Fill every block's slots with NaN, as memory fresh from the allocator may hold:
    a slot read before it is written (or read and not masked to zero) shows in the output."""
    assert isinstance(runner, PagedRunner)
    slots = runner.cache.num_blocks * runner.cache.block_size
    for tensor in (*runner.cache.keys, *runner.cache.values):
        tensor[:slots].fill_(float("nan"))


@torch.inference_mode()
def _greedy(runner: Runner, scheduler: Scheduler, seqs: list[Sequence], tokens: int) -> None:
    """Run the sequences to ``tokens`` generated tokens each, the way the harness steps."""
    for seq in seqs:
        scheduler.add(seq)
    while scheduler.has_work:
        batch = scheduler.schedule()
        for part, run in ((batch.decode, runner.decode), (batch.prefill, runner.prefill)):
            if part:
                logits = run(part)
                scheduler.blocks.commit()
                for seq, token in zip(part, logits.argmax(dim=-1).tolist(), strict=True):
                    seq.output_ids.append(int(token))
                    if seq.num_completion_tokens == tokens:
                        seq.status = SequenceStatus.FINISHED
        scheduler.retire()


def _seq(weights: loader.LoadedWeights, ids: list[int], tokens: int) -> Sequence:
    return Sequence(request=_request(weights, ids, tokens), sink=_Sink())


def test_greedy_equals_generate_alone_and_in_a_batch_of_other_lengths(
    weights: loader.LoadedWeights,
) -> None:
    prompts = [_prompt(weights, n, seed=n) for n in (3, 60, 200)]
    expected = [_oracle(weights, ids, 12) for ids in prompts]
    for ids, want in zip(prompts, expected, strict=True):
        runner, scheduler = _engine(weights)
        alone = _seq(weights, ids, 12)
        _greedy(runner, scheduler, [alone], 12)
        assert alone.output_ids == want
    runner, scheduler = _engine(weights)
    batch = [_seq(weights, ids, 12) for ids in prompts]
    _greedy(runner, scheduler, batch, 12)
    assert [seq.output_ids for seq in batch] == expected


def test_a_prompt_from_a_cached_prefix_computes_only_the_rest_and_answers_the_same(
    weights: loader.LoadedWeights,
) -> None:
    first = _prompt(weights, 150)
    turn = _prompt(weights, 150)[:-2] + _prompt(weights, 40, seed=3)  # the same start
    common = next(i for i, (a, b) in enumerate(zip(first, turn, strict=False)) if a != b)
    runner, scheduler = _engine(weights)
    _greedy(runner, scheduler, [_seq(weights, first, 4)], 4)
    computed = scheduler.figures.prefill_tokens
    second = _seq(weights, turn, 10)
    _greedy(runner, scheduler, [second], 10)
    reused = (common // BLOCK) * BLOCK  # the full blocks both prompts share
    assert reused >= 128
    assert scheduler.figures.hit_tokens == reused
    assert scheduler.figures.prefill_tokens - computed == len(turn) - reused
    assert second.output_ids == _oracle(weights, turn, 10)

    uncached_runner, uncached = _engine(weights, prefix_caching=False)
    again = _seq(weights, turn, 10)
    _greedy(uncached_runner, uncached, [_seq(weights, first, 4)], 4)
    _greedy(uncached_runner, uncached, [again], 10)
    assert uncached.figures.hit_tokens == 0
    assert again.output_ids == second.output_ids


def test_cached_blocks_give_way_under_pressure_least_recently_used_first(
    weights: loader.LoadedWeights,
) -> None:
    """Room for three finished conversations and two blocks: a fourth needs room, and the
    oldest conversation's blocks are the ones reused; the newer ones stay cached."""
    prompts = [_prompt(weights, 60, seed=s) for s in range(4)]
    per = -(-(max(len(ids) for ids in prompts) + 2) // BLOCK)
    runner, scheduler = _engine(weights, blocks=3 * per + 2)
    for ids in prompts[:3]:
        _greedy(runner, scheduler, [_seq(weights, ids, 2)], 2)
    full = [len(ids) // BLOCK * BLOCK for ids in prompts]
    assert [scheduler.blocks.cached_prefix(ids) for ids in prompts[:3]] == full[:3]
    _greedy(runner, scheduler, [_seq(weights, prompts[3], 2)], 2)
    found = [scheduler.blocks.cached_prefix(ids) for ids in prompts]
    assert found[0] < full[0] // 2  # the least recently used gave way
    assert found[1:] == full[1:]


def test_a_batch_that_needs_more_kv_than_there_is_completes_with_the_same_output(
    weights: loader.LoadedWeights,
) -> None:
    """Six sequences that need ~60 blocks in a cache of 24: decode preempts the newest and
    recomputes them later; every one ends with exactly what it generates alone."""
    prompts = [_prompt(weights, 20 + 9 * i, seed=i) for i in range(6)]
    expected = [_oracle(weights, ids, 40) for ids in prompts]
    runner, scheduler = _engine(weights, blocks=24)
    seqs = [_seq(weights, ids, 40) for ids in prompts]
    _greedy(runner, scheduler, seqs, 40)
    assert scheduler.figures.preemptions > 0
    assert [seq.output_ids for seq in seqs] == expected
    assert scheduler.blocks.num_used == 0


@pytest.fixture
async def harness(weights: loader.LoadedWeights) -> AsyncIterator[Any]:
    made: list[tuple[TransformersHarness, DeviceWorker]] = []

    def make(**options: Any) -> TransformersHarness:
        worker = DeviceWorker(CPU)
        engine = TransformersHarness(
            weights.model, CPU, worker, max_model_len=weights.context_length, **options
        )
        made.append((engine, worker))
        return engine

    yield make
    for engine, worker in made:
        await engine.aclose()
        await asyncio.to_thread(worker.close)


async def _text(stream: Any) -> str:
    events = [event async for event in stream]
    assert isinstance(events[-1], Done), events[-1]
    return "".join(e.text for e in events if isinstance(e, Text))


async def test_the_engine_streams_the_same_text_with_and_without_its_prefix_cache_under_load(
    harness: Any, weights: loader.LoadedWeights
) -> None:
    """Through the harness: 12 streams that share a long prefix, in a cache too small for
    them all, give the text each gives alone; the status counts hits and preemptions and
    every block is free at the end."""
    shared = _prompt(weights, 100)
    prompts = [shared[:-2] + _prompt(weights, 5 + i, seed=i)[-12:] for i in range(12)]
    layers, kv_heads = (
        weights.model.config.num_hidden_layers,
        weights.model.config.num_key_value_heads,
    )
    block_bytes = BLOCK * layers * 2 * kv_heads * weights.model.config.head_dim * 4
    small = harness(kv_cache_bytes=40 * block_bytes, max_num_seqs=12)
    _poison(small._runner)
    plain = harness(prefix_caching=False)
    alone = [await _text(plain.submit(_request(weights, ids, 30))) for ids in prompts]
    together = await asyncio.gather(
        *(_text(small.submit(_request(weights, ids, 30))) for ids in prompts)
    )
    assert list(together) == alone
    status = small.status
    assert status.prefix_hit_tokens > 0
    assert status.preemptions > 0
    assert status.kv_blocks_used == 0
    assert plain.status.prefix_hit_tokens == 0


def test_a_model_the_paged_attention_cannot_serve_runs_alone_in_its_own_cache() -> None:
    """gpt-oss attends with sinks, which the paged attention does not do: the probe says
    so, the model keeps its own attention, and sequences run one at a time in transformers'
    DynamicCache with the output of its own ``generate``."""
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=512, sliding_window=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(0)
    model = GptOssForCausalLM(config).eval()
    runner, manager, _ = make_runner(
        model, CPU, max_model_len=512, max_num_seqs=4, kv_cache_bytes=None,
        block_size=BLOCK, prefix_caching=True,
    )  # fmt: skip
    assert not runner.paged
    assert model.config._attn_implementation != "cortex_paged"
    assert not manager.prefix_caching
    prompts = [[(7 * i + j) % 200 + 1 for j in range(20 + 9 * i)] for i in range(3)]
    seqs = [
        Sequence(
            request=InferenceRequest(
                request_id=str(i),
                prompt_ids=ids,
                params=SamplingParams(max_tokens=12),
                output=TextOutput(_Letters()),
            ),
            sink=_Sink(),
        )
        for i, ids in enumerate(prompts)
    ]
    scheduler = Scheduler(1, 8192, manager)
    _greedy(runner, scheduler, seqs, 12)
    for seq, ids in zip(seqs, prompts, strict=True):
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False
        )
        assert seq.output_ids == [int(t) for t in out[0, len(ids) :]]


class _Letters:
    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(ord("a") + t % 26) for t in token_ids)
