"""Sampling: small pure functions over a batch of logits, then one ``sample_next``.

Every function takes logits ``[B, V]`` and per-row parameters ``[B]``, so sequences
with different settings share one batch. Rows are independent: a row's result never
depends on the others (seeded rows draw from their own generator), which is what
makes a seeded request reproducible whatever else is in the batch.

``sample_next`` takes any value a ``SamplingParams`` field can hold without failing the
batch: a ``top_k`` past the vocabulary is cut to it in Python before it becomes a tensor,
seeds are taken modulo 2**64, stop and EOS ids the model cannot write are not masked, and
a temperature below ``MIN_TEMPERATURE`` is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from cortex.neuron.engine.sequence import Sequence

NEG_INF = float("-inf")
_SEEDS = 2**64


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    # logits: [B, V]; seen: [B, V] bool (prompt and output tokens); penalty: [B]
    p = penalty[:, None]
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalized, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    # counts: [B, V] occurrences in the output so far; presence, frequency: [B]
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    # temperature: [B], > 0 for every row that reaches here
    return logits / temperature[:, None]


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    # Drop tokens whose probability is below min_p × the top token's probability.
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
    return logits.masked_fill(probs < threshold, NEG_INF)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    # top_k: [B] int, <= 0 means off
    vocab = logits.shape[-1]
    k = torch.where(top_k <= 0, vocab, top_k.clamp(max=vocab))
    kth = logits.sort(dim=-1, descending=True).values.gather(-1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # Keep the smallest set of tokens whose probability reaches top_p (at least one).
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    sorted_logits = sorted_logits.masked_fill(before >= top_p[:, None], NEG_INF)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def draw(probs: torch.Tensor, generators: Seq[torch.Generator | None]) -> torch.Tensor:
    # probs: [B, V]; argmax(p / q) with q ~ Exp(1) is a draw from p; one generator per row
    noise = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        noise[row].exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def sample_next(logits: torch.Tensor, seqs: Seq[Sequence]) -> list[int]:
    """Pick the next token for each sequence; ``logits[i]`` belongs to ``seqs[i]``."""
    # logits: [B, V]
    logits = logits.float()
    device = logits.device
    params = [seq.request.params for seq in seqs]
    logits = _mask_until_min_tokens(logits, seqs)
    if any(p.has_penalties for p in params):
        logits = _apply_penalties(logits, seqs)
    if all(p.is_greedy for p in params):
        return [int(t) for t in logits.argmax(dim=-1).tolist()]

    greedy = torch.tensor([p.is_greedy for p in params], device=device)
    temperature = [1.0 if p.is_greedy else p.temperature for p in params]
    scaled = apply_temperature(logits, torch.tensor(temperature, device=device))
    if any(p.min_p > 0 for p in params):
        scaled = apply_min_p(scaled, torch.tensor([p.min_p for p in params], device=device))
    vocab = logits.shape[-1]
    top_k = [min(p.top_k, vocab) if p.top_k > 0 else 0 for p in params]
    if any(top_k):
        scaled = apply_top_k(scaled, torch.tensor(top_k, device=device))
    if any(p.top_p < 1.0 for p in params):
        scaled = apply_top_p(scaled, torch.tensor([p.top_p for p in params], device=device))
    drawn = draw(torch.softmax(scaled, dim=-1), [seq.generator for seq in seqs])
    chosen = torch.where(greedy, logits.argmax(dim=-1), drawn)
    return [int(t) for t in chosen.tolist()]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % _SEEDS)  # torch's seeds are unsigned 64-bit
    return generator


def _mask_until_min_tokens(logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
    vocab = logits.shape[-1]
    for row, seq in enumerate(seqs):
        request = seq.request
        if seq.num_completion_tokens < request.params.min_tokens:
            ends = (*request.eos_token_ids, *request.params.stop_token_ids)
            banned = [t for t in ends if 0 <= t < vocab]  # the model cannot write the others
            if banned:
                logits[row, banned] = NEG_INF
    return logits


def _apply_penalties(logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
    batch, vocab = logits.shape
    device = logits.device
    counts = torch.zeros(batch, vocab, device=device)
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
    for row, seq in enumerate(seqs):
        if seq.output_ids:
            ids = torch.tensor(seq.output_ids, device=device).clamp(max=vocab - 1)
            counts[row].scatter_add_(0, ids, torch.ones_like(ids, dtype=counts.dtype))
        prompt = torch.tensor(seq.request.prompt_ids, device=device).clamp(max=vocab - 1)
        seen[row, prompt] = True
    seen |= counts > 0
    params = [seq.request.params for seq in seqs]
    logits = apply_repetition_penalty(
        logits, seen, torch.tensor([p.repetition_penalty for p in params], device=device)
    )
    return apply_presence_frequency(
        logits,
        counts,
        torch.tensor([p.presence_penalty for p in params], device=device),
        torch.tensor([p.frequency_penalty for p in params], device=device),
    )


def token_logprobs(
    logits: torch.Tensor, tokens: list[int], wanted: Seq[int | None]
) -> list[tuple[float, list[tuple[int, float]]] | None]:
    """Per row: the chosen token's log-probability and the ``k`` most likely (raw logits).

    ``wanted[i]`` is None for rows that asked for no logprobs.
    """
    # logits: [B, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    most = min(max((k for k in wanted if k is not None), default=0), logprobs.shape[-1])
    top_values, top_ids = logprobs.topk(most, dim=-1) if most else (None, None)
    found: list[tuple[float, list[tuple[int, float]]] | None] = []
    for row, k in enumerate(wanted):
        if k is None:
            found.append(None)
            continue
        chosen = float(logprobs[row, tokens[row]])
        top: list[tuple[int, float]] = []
        if k and top_values is not None and top_ids is not None:
            top = [
                (int(t), float(v))
                for t, v in zip(top_ids[row, :k], top_values[row, :k], strict=True)
            ]
        found.append((chosen, top))
    return found
