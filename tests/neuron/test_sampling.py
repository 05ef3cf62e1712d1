"""Sampling functions: each control moves the distribution the way it should."""

from __future__ import annotations

import torch

from cortex.neuron.engine.sampling import (
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    draw,
)

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
