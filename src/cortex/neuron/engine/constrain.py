"""Structured outputs in the transformers engine: each constrained sequence's grammar masks its
own row of the batch's logits before sampling, and advances with the token it takes.

Rows without a constraint are not touched, so constrained and free sequences batch together and
a free sequence samples exactly as it would alone. A constraint's failure (a token it cannot take)
is that sequence's alone: it comes back for the harness to end that sequence.
"""

from __future__ import annotations

import torch

from cortex.neuron.engine.sequence import Sequence

__all__ = ["accept_rows", "mask_rows"]

_BITS = torch.arange(32, dtype=torch.int32)


def mask_rows(logits: torch.Tensor, seqs: list[Sequence]) -> dict[int, Exception]:
    """Mask, in place, every constrained row of ``logits`` ([B, V], ``seqs`` in order) to the
    tokens its grammar allows; the rows whose mask failed, with why."""
    rows = [
        i
        for i, seq in enumerate(seqs)
        if seq.request.constraint is not None and not seq.is_finished
    ]
    if not rows:
        return {}
    vocab = logits.shape[-1]
    first = seqs[rows[0]].request.constraint
    assert first is not None
    words = first.words  # the grammar's vocabulary (a model's logits may have more columns)
    bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
    failed: dict[int, Exception] = {}
    for j, i in enumerate(rows):
        constraint = seqs[i].request.constraint
        assert constraint is not None
        try:
            constraint.fill(bitmask, j)
        except Exception as exc:  # a misused matcher: this sequence fails, the others go on
            failed[i] = exc
    # [R, W] words → [R, W * 32] bits (bit k of word w is token 32w + k), cut to the vocabulary.
    allowed = ((bitmask[:, :, None] >> _BITS) & 1).flatten(1).bool()
    if allowed.shape[1] < vocab:  # ids past the tokenizer's: never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
    allowed = allowed[:, :vocab]
    for j, i in enumerate(rows):
        seq = seqs[i]
        constraint = seq.request.constraint
        assert constraint is not None
        room = seq.request.params.max_tokens - seq.num_completion_tokens
        allowed[j] = constraint.narrow(allowed[j], room)
    index = torch.tensor(rows, device=logits.device)
    masked = logits.index_select(0, index).masked_fill(~allowed.to(logits.device), float("-inf"))
    logits.index_copy_(0, index, masked)
    return failed


def accept_rows(seqs: list[Sequence], tokens: list[int]) -> dict[int, str]:
    """Advance each constrained sequence's grammar past the token it takes; the rows whose
    token did not fit, with why."""
    failed: dict[int, str] = {}
    for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
        constraint = seq.request.constraint
        if constraint is None or seq.is_finished or token < 0:
            continue
        if token in seq.request.eos_token_ids:
            continue  # it ends here, as the grammar allowed
        why = constraint.accept(token)
        if why is not None:
            failed[i] = why
    return failed
