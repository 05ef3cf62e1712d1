"""One bad sequence fails alone: the engine's defence behind the HTTP edge's validation.

The edge (``protocol`` and ``neuron.prepare``) refuses bad requests with a 400; this module
keeps a value it let through, or a bug of one sequence's own, from failing the others in
its batch:

* ``check_request``, at ``submit``: a request no batch should run with (an empty prompt,
  a token outside the model's vocabulary, a non-finite or out-of-range sampling value) is
  refused with an ``Error`` on its own stream before it reaches the worker.
* ``per_row``, for sampling and logprobs: when the batch's call raises, each row is run
  alone, so the rows that fail it are known; the others keep their results.
* ``prefill_rows``: when the batched prefill of the joining sequences raises, each is
  prefilled alone, in blocks allocated afresh (what the failed pass was to write is
  unsealed first, so nobody reuses it); the ones that fail lose their blocks, the others
  join.

A device error (a CUDA error, a device-side assert: the device's context may be broken) is
never one sequence's: ``is_device_error`` says so, and it is raised on for the worker to
fail the device. Out-of-memory is not a device error: a prompt too large to prefill with
the others is tried alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, TypeVar

import torch

from cortex.errors import Overloaded
from cortex.neuron.engine.base import InferenceRequest
from cortex.neuron.engine.sampling import sample_next, token_logprobs

if TYPE_CHECKING:
    from cortex.neuron.engine.runner import Runner
    from cortex.neuron.engine.scheduler import Scheduler
    from cortex.neuron.engine.sequence import Sequence

T = TypeVar("T")
Logprobs = tuple[float, list[tuple[int, float]]] | None


def check_room(name: str, waiting: int, limit: int) -> None:
    """Raise ``Overloaded`` (429, Retry-After) when ``waiting`` sequences fill the queue."""
    if waiting >= limit:
        raise Overloaded(
            f"The model {name!r} has {waiting} requests waiting, its limit; retry shortly",
            headers={"Retry-After": "1"},
        )


def check_request(
    request: InferenceRequest, vocab_size: int | None, max_model_len: int | None = None
) -> str | None:
    """Why the engine must not run ``request`` (the message of its stream's Error), or None.

    Cheap enough for the event loop: constant work per field, and one C-speed pass over
    the prompt's ids for their range.
    """
    ids = request.prompt_ids
    if not ids:
        return "the prompt is empty: the chat template rendered no tokens"
    if min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
        return f"the prompt holds a token id outside the model's vocabulary ({vocab_size} ids)"
    if max_model_len is not None and len(ids) >= max_model_len:
        return f"the prompt's {len(ids)} tokens leave no room in the context of {max_model_len}"
    p = request.params
    checks = (
        ("max_tokens", p.max_tokens, p.max_tokens >= 1),
        ("temperature", p.temperature, 0.0 <= p.temperature < math.inf),
        ("top_p", p.top_p, 0.0 < p.top_p <= 1.0),
        ("min_p", p.min_p, 0.0 <= p.min_p <= 1.0),
        ("presence_penalty", p.presence_penalty, math.isfinite(p.presence_penalty)),
        ("frequency_penalty", p.frequency_penalty, math.isfinite(p.frequency_penalty)),
        ("repetition_penalty", p.repetition_penalty, 0.0 < p.repetition_penalty < math.inf),
        ("min_tokens", p.min_tokens, p.min_tokens >= 0),
        ("logprobs", p.logprobs, p.logprobs is None or p.logprobs >= 0),
        ("stop_token_ids", p.stop_token_ids, all(t >= 0 for t in p.stop_token_ids)),
    )
    for name, value, ok in checks:
        if not ok:
            return f"{name} is out of range: {value!r}"
    return None


def is_device_error(exc: BaseException, device: torch.device) -> bool:
    """An error of the device itself, never of one sequence (out-of-memory is not one)."""
    if device.type == "cpu" or isinstance(exc, torch.OutOfMemoryError):
        return False
    text = str(exc)
    return isinstance(exc, torch.AcceleratorError) or "CUDA" in text or "device-side" in text


def per_row(
    batch: Callable[[], Seq[T]], row: Callable[[int], T], rows: int, device: torch.device
) -> list[T | Exception]:
    """``batch()``'s results; when it raises, ``row(i)`` for each row alone, a row that
    raises getting its exception in place of a result. Device errors are raised on."""
    try:
        return list(batch())
    except Exception as exc:
        if is_device_error(exc, device):
            raise
        if rows == 1:
            return [exc]
    found: list[T | Exception] = []
    for i in range(rows):
        try:
            found.append(row(i))
        except Exception as exc:
            if is_device_error(exc, device):
                raise
            found.append(exc)
    return found


def sample_rows(
    logits: torch.Tensor, seqs: list[Sequence], device: torch.device
) -> list[int | Exception]:
    """``sample_next`` for the batch, else row by row (a failed row gets its exception)."""
    return per_row(
        lambda: sample_next(logits, seqs),
        lambda i: sample_next(logits[i : i + 1], seqs[i : i + 1])[0],
        len(seqs),
        device,
    )


def logprob_rows(
    logits: torch.Tensor, seqs: list[Sequence], tokens: list[int], device: torch.device
) -> list[Logprobs | Exception]:
    """``token_logprobs`` for the unfinished sequences that asked, else row by row."""
    wanted = [None if s.is_finished else s.request.params.logprobs for s in seqs]
    if all(w is None for w in wanted):
        return [None] * len(seqs)
    return per_row(
        lambda: token_logprobs(logits, tokens, wanted),
        lambda i: token_logprobs(logits[i : i + 1], tokens[i : i + 1], wanted[i : i + 1])[0],
        len(seqs),
        device,
    )


def prefill_rows(
    runner: Runner, scheduler: Scheduler, seqs: list[Sequence]
) -> tuple[list[Sequence], torch.Tensor | None, list[tuple[Sequence, Exception]]]:
    """Prefill ``seqs`` together, else one by one: the sequences that joined (in this
    order), their next-token logits ``[N, V]``, and the ones that failed with why (their
    blocks freed, they leave ``running``). A sequence whose blocks no longer fit alone goes
    back to the front of ``waiting``."""
    if not seqs:
        return [], None, []
    blocks = scheduler.blocks
    try:
        logits = runner.prefill(seqs)
        blocks.commit()
        return seqs, logits, []
    except Exception as exc:
        blocks.forget_pending()
        if is_device_error(exc, runner.device):
            raise
        if len(seqs) == 1:
            scheduler.unadmit(seqs)
            return [], None, [(seqs[0], exc)]
    scheduler.requeue(seqs)
    joined: list[Sequence] = []
    found: list[torch.Tensor] = []
    failed: list[tuple[Sequence, Exception]] = []
    for seq in seqs:
        if not scheduler.readmit(seq):
            continue
        try:
            found.append(runner.prefill([seq]))
            blocks.commit()
            joined.append(seq)
        except Exception as exc:
            blocks.forget_pending()
            if is_device_error(exc, runner.device):
                raise
            scheduler.unadmit([seq])
            failed.append((seq, exc))
    return joined, torch.cat(found) if found else None, failed
