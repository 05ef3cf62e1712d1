"""Sampling functions: each control moves the distribution the way it should."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import torch

from cortex.neuron.engine.base import MIN_TEMPERATURE, InferenceRequest, SamplingParams
from cortex.neuron.engine.sampling import (
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    draw,
    make_generator,
    sample_next,
    token_logprobs,
)
from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.wire.events import InferenceEvent
from cortex.neuron.wire.output import TextOutput

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0]])


def _kept(logits: torch.Tensor) -> list[list[int]]:
    return [[i for i, v in enumerate(row.tolist()) if v != float("-inf")] for row in logits]


def test_top_k_keeps_k_best_per_row_and_zero_means_off() -> None:
    out = apply_top_k(LOGITS.clone(), torch.tensor([1, 0]))
    assert _kept(out) == [[0], [0, 1, 2, 3]]


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    # Row 0 probabilities ≈ [0.61, 0.22, 0.14, 0.03]
    out = apply_top_p(LOGITS.clone(), torch.tensor([0.7, 1.0]))
    assert _kept(out) == [[0, 1], [0, 1, 2, 3]]


def test_min_p_drops_tokens_far_below_the_best() -> None:
    out = apply_min_p(LOGITS.clone(), torch.tensor([0.3, 0.0]))
    assert _kept(out) == [[0, 1], [0, 1, 2, 3]]


def test_repetition_penalty_lowers_seen_tokens_only() -> None:
    seen = torch.tensor([[True, False, False, True], [False] * 4])
    out = apply_repetition_penalty(LOGITS.clone(), seen, torch.tensor([2.0, 2.0]))
    assert out[0].tolist() == [1.0, 1.0, 0.5, -2.0]
    assert torch.equal(out[1], LOGITS[1])


def test_presence_and_frequency_penalties_scale_with_counts() -> None:
    counts = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    out = apply_presence_frequency(
        LOGITS.clone(), counts, torch.tensor([0.5, 0.0]), torch.tensor([0.25, 1.0])
    )
    assert out[0].tolist() == [2.0, 1.0 - 0.5 - 0.5, 0.5, -1.0]
    assert out[1].tolist() == [-1.0, 3.0, 1.0, 2.0]


def test_seeded_draws_repeat_per_row_whatever_the_other_rows() -> None:
    probs = torch.softmax(torch.zeros(3, 50), dim=-1)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    alone = [int(draw(probs[:1], [gen(7)])[0]) for _ in range(3)]
    batched = [int(draw(probs, [gen(1), gen(7), gen(3)])[1]) for _ in range(3)]
    assert alone == [alone[0]] * 3
    assert batched == alone


class _Letters:
    """The part of a tokenizer ``TextOutput`` needs."""

    def decode(self, token_ids: Seq[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(ord("a") + t % 26) for t in token_ids)


class _Sink:
    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        pass


def _seq(**params: Any) -> Sequence:
    request = InferenceRequest(
        request_id="r",
        prompt_ids=[1, 2, 3],
        params=SamplingParams(**{"max_tokens": 8, **params}),
        output=TextOutput(_Letters()),
        eos_token_ids=frozenset({0}),
    )
    seq = Sequence(request=request, sink=_Sink())
    if not request.params.is_greedy:
        seq.generator = make_generator(request.params.seed, torch.device("cpu"))
    return seq


def test_values_no_tensor_can_hold_fail_no_row() -> None:
    """A top_k or seed past 64 bits, stop ids outside the vocabulary: each row samples."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    seqs = [
        _seq(temperature=1.0, top_k=2**63, seed=1),
        _seq(temperature=1.0, seed=2**64 + 7),
        _seq(min_tokens=4, stop_token_ids=(10**6, 2**70)),
        _seq(),
    ]
    tokens = sample_next(logits.clone(), seqs)
    assert all(0 <= t < 50 for t in tokens)
    # An id the model can write is still held back until min_tokens; the others are ignored.
    logits[2, 0] = 100.0  # EOS (id 0) would win
    assert sample_next(logits[2:3].clone(), [_seq(min_tokens=4, stop_token_ids=(10**6,))]) != [0]
    # Seeds are taken modulo 2**64.
    same = [
        sample_next(logits[:1].clone(), [_seq(temperature=1.0, seed=s)]) for s in (7, 2**64 + 7)
    ]
    assert same[0] == same[1]


def test_a_temperature_below_the_minimum_is_greedy() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    seqs = [_seq(temperature=t, seed=3) for t in (1e-320, MIN_TEMPERATURE / 2, 0.0)]
    assert sample_next(logits.clone(), seqs) == logits.argmax(dim=-1).tolist()
    assert all(seq.request.params.is_greedy for seq in seqs)
    assert not SamplingParams(max_tokens=1, temperature=MIN_TEMPERATURE).is_greedy


def test_logprobs_asked_past_the_vocabulary_are_the_whole_vocabulary() -> None:
    logits = torch.randn(2, 5)
    found = token_logprobs(logits, [0, 1], [10**6, None])
    assert found[1] is None
    assert found[0] is not None
    assert len(found[0][1]) == 5
