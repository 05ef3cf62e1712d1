"""Per-sequence output processing: token ids → InferenceEvents, stop strings.

Runs on the engine's worker thread, one ``OutputProcessor`` per sequence. Stop
strings are matched on text (so across token boundaries) and never included in the
output: text that could be the start of a stop string is held back until it is not.
"""

from __future__ import annotations

from typing import Protocol

from cortex.neuron.wire.detok import Decodes, IncrementalDecoder
from cortex.neuron.wire.events import InferenceEvent, Text


class OutputProcessor(Protocol):
    """Contract the engine relies on; called only from the engine's worker thread."""

    def feed(self, token_id: int) -> tuple[list[InferenceEvent], str | None]:
        """Events made complete by one generated token, and the stop string it completed."""
        ...

    def finish(self, complete: bool = True) -> list[InferenceEvent]:
        """Events still pending when generation ends for a reason other than a stop string;
        ``complete``: it ended on its own (end of sequence), not at a length limit."""
        ...

    @property
    def reasoning_tokens(self) -> int:
        """How many of the tokens fed so far were generated inside reasoning."""
        ...

    def forced_next(self) -> int | None:
        """A token the next one must be, whatever is sampled (a spent thinking budget)."""
        ...

    def redirect(self, token_id: int) -> int:
        """The token to take instead of ``token_id``, the one sampled (when nothing was
        forced): the start of a forced tool call, for one."""
        ...


class StopMatcher:
    """Finds the earliest stop string in streamed text; holds back possible prefixes."""

    __slots__ = ("_pending", "_stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to release, the stop string matched or None)."""
        if not self._stops:
            return text, None
        self._pending += text
        hit: tuple[int, str] | None = None
        for stop in self._stops:
            at = self._pending.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            released = self._pending[: hit[0]]
            self._pending = ""
            return released, hit[1]
        keep = self._held_suffix()
        cut = len(self._pending) - keep
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return released, None

    def flush(self) -> str:
        released, self._pending = self._pending, ""
        return released

    def _held_suffix(self) -> int:
        """Length of the longest suffix of pending text that starts some stop string."""
        pending = self._pending
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), longest, -1):
                if pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class VisibleText:
    """The client's text channel of one sequence: stop strings applied, and whether any
    visible (non-whitespace) text has gone out yet."""

    __slots__ = ("_stops", "replied", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = StopMatcher(stops)
        self.stopped = False
        self.replied = False

    def push(self, text: str, *, final: bool) -> tuple[list[InferenceEvent], str | None]:
        """``Text`` that can go out now, and the stop string matched; ``final`` ends a run of
        text (nothing is held back for a stop string any more)."""
        released, stop = self._stops.push(text)
        if stop is not None:
            self.stopped = True
        elif final:
            released += self._stops.flush()
        if released and not released.isspace():
            self.replied = True
        return ([Text(released)] if released else []), stop


class TextOutput:
    """Plain text output: detokenize, apply stop strings, emit ``Text`` events."""

    __slots__ = ("_decoder", "_stopped", "_stops")

    def __init__(self, tokenizer: Decodes, stops: tuple[str, ...] = ()) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = StopMatcher(stops)
        self._stopped = False

    def feed(self, token_id: int) -> tuple[list[InferenceEvent], str | None]:
        text, stop = self._stops.push(self._decoder.push(token_id))
        if stop is not None:
            self._stopped = True
        return ([Text(text)] if text else []), stop

    @property
    def reasoning_tokens(self) -> int:
        return 0

    def forced_next(self) -> int | None:
        return None

    def redirect(self, token_id: int) -> int:
        return token_id

    def finish(self, complete: bool = True) -> list[InferenceEvent]:
        if self._stopped:
            return []
        text, stop = self._stops.push(self._decoder.flush())
        text += "" if stop is not None else self._stops.flush()
        return [Text(text)] if text else []
