"""``SequenceStream``: the consumer's end of one sequence, on the event loop.

The worker hands a step's events over with one ``call_soon_threadsafe`` per step
(``dispatch``); the stream yields them in order and ends after a ``Done`` or an ``Error``.
Closing it early cancels its sequence at the worker's next step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.wire.events import Done, Error, InferenceEvent

Posts = list[tuple[Sequence, list[InferenceEvent], int]]


class SequenceStream:
    """The consumer's end of one sequence; an async iterator of events."""

    def __init__(self, wake: Any) -> None:
        self._wake = wake
        self._queue: asyncio.Queue[tuple[list[InferenceEvent], int]] = asyncio.Queue()
        self._pending: deque[InferenceEvent] = deque()
        self._ended = False
        self.seq: Sequence | None = None
        self.completion_tokens = 0  # generated up to the last event handed out

    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        """On the event loop."""
        self._queue.put_nowait((events, completion_tokens))

    def __aiter__(self) -> AsyncIterator[InferenceEvent]:
        return self

    async def __anext__(self) -> InferenceEvent:
        if not self._pending:
            if self._ended:
                raise StopAsyncIteration
            events, self.completion_tokens = await self._queue.get()
            self._pending.extend(events)
        event = self._pending.popleft()
        if isinstance(event, Done | Error):
            self._ended = True
            self._pending.clear()
        return event

    async def aclose(self) -> None:
        if not self._ended and self.seq is not None:
            self._ended = True
            self.seq.cancel()
            self._wake()


def dispatch(posts: Posts) -> None:
    for seq, events, count in posts:
        seq.sink.put(events, count)
