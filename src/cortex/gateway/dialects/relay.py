"""What the dialects' relays share: a neuron's stream as typed events, and its accounting.

Each upstream stream is decoded by the one SSE codec (``cortex.sse``) and each event is
parsed once, here, into the typed models of ``protocol`` (``ChatCompletionChunk`` for
chat, ``StreamEvent`` for Responses). Usage and time-to-first-token are read from those
typed objects and nowhere else. An event that does not parse is a ``BadUpstream``, which
the relay turns into the dialect's error event at the end of the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from cortex import sse
from cortex.errors import BadUpstream
from cortex.gateway.proxy import Outcome
from cortex.gateway.upstream import UpstreamResponse
from cortex.protocol.openai_reply import Counted, TokenCounts

M = TypeVar("M", bound=BaseModel)


async def upstream_events(response: UpstreamResponse) -> AsyncIterator[list[sse.Event]]:
    """The response's events, a batch per read (never an empty batch)."""
    decoder = sse.Decoder()
    async for piece in response:
        events = decoder.feed(piece)
        if events:
            yield events
    last = decoder.close()
    if last:
        yield last


def parse_event(kind: type[M], event: sse.Event) -> M:
    """One event's data as ``kind``; ``BadUpstream`` when it is not one."""
    try:
        return kind.model_validate_json(event.data)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise BadUpstream(f"The neuron sent a stream event that is not valid: {problem}") from None


def count_usage(outcome: Outcome, usage: TokenCounts | None) -> None:
    """Take a reply's usage (the last figures a stream reports are its totals)."""
    if usage is not None:
        outcome.prompt_tokens, outcome.completion_tokens = usage.prompt, usage.completion


def count_reply(outcome: Outcome, body: bytes) -> None:
    """The usage of a whole (non-streamed) reply; a body without one counts nothing."""
    with contextlib.suppress(ValidationError):
        count_usage(outcome, Counted.model_validate_json(body).usage)
