"""What one generated token does to its sequence, the same on every engine: append it, time
it, end the sequence on an end-of-sequence id, a stop id, a stop string or a length limit,
and turn it into events through the sequence's output processor.

Both harnesses call these on the thread that owns the sequence (the transformers engine's
device worker; the event loop for vLLM's).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.engine.stats import EngineStats
from cortex.neuron.wire.events import InferenceEvent, TokenLogprob


def postprocess(
    seq: Sequence, token: int, now: float, stats: EngineStats, max_model_len: int
) -> list[InferenceEvent]:
    """Take ``token`` into ``seq``: the events it makes, ``Done`` last when it ends there."""
    request, params = seq.request, seq.request.params
    seq.output_ids.append(token)
    if seq.first_token_time is None:
        seq.first_token_time = now
        stats.first_token(now - seq.arrival_time)
    else:
        stats.token_gap(now - seq.last_token_time)
    seq.last_token_time = now
    events: list[InferenceEvent] = []
    if token in request.eos_token_ids and not params.ignore_eos:
        seq.finish_reason = "stop"
    elif token in params.stop_token_ids:
        seq.finish_reason, seq.stop_reason = "stop", token
    else:
        produced, stop = request.output.feed(token)
        events.extend(produced)
        if stop is not None:
            seq.finish_reason, seq.stop_reason = "stop", stop
    if seq.finish_reason is None and (
        seq.num_completion_tokens >= params.max_tokens or seq.num_tokens >= max_model_len
    ):
        seq.finish_reason = "length"
    if seq.finish_reason is not None:
        if not isinstance(seq.stop_reason, str):
            # A call with no closing token is whole only if generation ended on its own.
            events.extend(request.output.finish(seq.finish_reason != "length"))
        events.append(seq.done(seq.finish_reason))
        seq.status = SequenceStatus.FINISHED
        stats.finished(seq, now)
    return events


def forced_token(seq: Sequence, max_model_len: int) -> int | None:
    """The token ``seq`` must take next whatever is sampled: its output's (a spent thinking
    budget, a forced call), else its grammar's (closing JSON the length limit would cut)."""
    forced = seq.request.output.forced_next()
    constraint = seq.request.constraint
    if forced is not None or constraint is None:
        return forced
    room = min(
        seq.request.params.max_tokens - seq.num_completion_tokens, max_model_len - seq.num_tokens
    )
    return constraint.forced(room)


def logprob_event(
    seq: Sequence, token: int, chosen: float, top: Seq[tuple[int, float]]
) -> TokenLogprob:
    """The ``TokenLogprob`` of ``token`` (its logprob ``chosen``) and the most likely ``top``."""
    text = seq.request.token_text or str
    return TokenLogprob(text(token), chosen, tuple((text(t), lp) for t, lp in top))
