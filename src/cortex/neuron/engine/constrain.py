"""Structured outputs in the transformers engine: each constrained sequence's grammar masks its
own row of the batch's logits before sampling, and advances with the token it takes.

* ``Masks`` computes the step's bitmask rows on a thread of its own while the model runs its
  forward pass (llguidance lets go of the GIL while it works, and the rows depend only on the
  tokens already taken), so a grammar costs the batch little more than applying its mask.
* Rows without a constraint are not touched, so constrained and free sequences batch together
  and a free sequence samples exactly as it would alone.
* A constraint's failure (a mask it cannot compute, a token it cannot take) is that sequence's
  alone: it comes back for the harness to end that sequence.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Any

import torch
from llguidance import LLExecutor

from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.structured.matcher import narrow

__all__ = ["Masks", "accept_rows"]

# Bit k of an int32 word (bit 31 is the sign bit: -2**31).
_BITS = torch.tensor([1 << k if k < 31 else -(1 << 31) for k in range(32)], dtype=torch.int32)
# One thread computes the masks of every harness's steps (a device worker steps one harness at
# a time); it runs beside the forward pass, not beside other masks.
_POOL = ThreadPoolExecutor(1, thread_name_prefix="cortex-grammar")


@cache
def _executor() -> LLExecutor:
    # Two threads: a step's rows in parallel where the machine has the cores to spare.
    return LLExecutor(num_threads=2)


class Masks:
    """The bitmask rows of ``seqs``' constrained sequences, started now on the grammar thread;
    ``apply`` waits for them and masks the logits."""

    __slots__ = ("_bitmask", "_failed", "_future", "_rows")

    def __init__(self, seqs: Seq[Sequence]) -> None:
        self._rows = {
            seq: j
            for j, seq in enumerate(
                s for s in seqs if s.request.constraint is not None and not s.is_finished
            )
        }
        self._failed: dict[Sequence, Exception] = {}
        self._future: Future[None] | None = None
        self._bitmask: torch.Tensor | None = None
        if not self._rows:
            return
        self._future = _POOL.submit(self._fill)

    def _fill(self) -> None:
        """Every row: the matchers' in one call (llguidance's executor, the GIL let go for
        all of them), the rest (reasoning) one by one; should the call fail, one by one."""
        first = next(iter(self._rows)).request.constraint
        assert first is not None
        # Made here, outside the step's inference mode (a tensor made inside it could not be
        # written on this thread). The grammar's vocabulary: logits may have more columns.
        bitmask = self._bitmask = torch.zeros((len(self._rows), first.words), dtype=torch.int32)
        together: list[tuple[Any, int]] = []
        alone: list[tuple[Sequence, int]] = []
        for seq, row in self._rows.items():
            constraint = seq.request.constraint
            assert constraint is not None
            matcher = constraint.matcher
            if matcher is None:
                alone.append((seq, row))
            else:
                together.append((matcher, row))
        try:
            if together:  # (not llguidance.torch's helper: importing it compiles a kernel)
                row_bytes = bitmask.shape[1] * bitmask.element_size()
                _executor().unsafe_compute_mask_ptr(
                    together, bitmask.data_ptr(), row_bytes, bitmask.shape[0]
                )
        except Exception:
            alone = list(self._rows.items())
        for seq, row in alone:
            constraint = seq.request.constraint
            assert constraint is not None
            try:
                constraint.fill(bitmask, row)
            except Exception as exc:  # a misused matcher: this sequence fails, the others go on
                self._failed[seq] = exc

    def apply(self, logits: torch.Tensor, seqs: list[Sequence]) -> dict[int, Exception]:
        """Mask, in place, every constrained row of ``logits`` ([B, V], ``seqs`` in order) to
        the tokens its grammar allows; the rows whose mask failed, with why."""
        if self._future is None:
            return {}
        self._future.result()
        if self._bitmask is None:
            return {}
        found = [(i, self._rows[seq]) for i, seq in enumerate(seqs) if seq in self._rows]
        if not found:
            return {}
        failed = {i: self._failed[seqs[i]] for i, _ in found if seqs[i] in self._failed}
        vocab = logits.shape[-1]
        words = self._bitmask[[row for _, row in found]]
        # [R, W] words → [R, W * 32] bits (bit k of word w is token 32w + k), cut to the vocabulary.
        allowed = ((words[:, :, None] & _BITS) != 0).flatten(1)
        if allowed.shape[1] < vocab:  # ids past the tokenizer's: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        allowed = allowed[:, :vocab]
        allowed = _near_the_limit(allowed, [seqs[i] for i, _ in found])
        index = torch.tensor([i for i, _ in found], device=logits.device)
        masked = logits.index_select(0, index).masked_fill(
            ~allowed.to(logits.device), float("-inf")
        )
        logits.index_copy_(0, index, masked)
        return failed


def _near_the_limit(allowed: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """``allowed`` with the rows of open JSON answers near their length limit narrowed so that
    they end (``structured.matcher.narrow``), all such rows at once."""
    rows: list[int] = []
    inside: list[bool] = []
    closers = None
    for j, seq in enumerate(seqs):
        constraint = seq.request.constraint
        assert constraint is not None
        found = constraint.narrowing(seq.request.params.max_tokens - seq.num_completion_tokens)
        if found is not None:
            closers = found[0]
            rows.append(j)
            inside.append(found[1])
    if closers is None:
        return allowed
    index = torch.tensor(rows, device=allowed.device)
    flags = torch.tensor(inside, device=allowed.device)
    allowed[index] = narrow(allowed[index], closers, flags)
    return allowed


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
