"""gpt-oss's harmony messages (``formats.harmony``) → ``Text``, ``Reasoning`` and ``ToolCall``
events, one id at a time on the engine's worker thread::

              <|message|>                 <|end|> / <|call|> / <|return|>
    +--------+ ---------> +------+ -----------------------------> +---------+
    | header |            | body |                                | between |
    +--------+ <--------- +------+ <----------------------------- +---------+
         ^   <|start|> / <|channel|>          <|start|> / <|channel|>  |
         +-------------------------------------------------------------+

The output starts in a header (the prompt ends with ``<|start|>assistant``). A forced tool
choice forces the analysis header first and, once that message ends, the call's header
(``forced``, ``deferred``). A body's channel decides what it is:
``analysis`` is reasoning, a recipient ``to=functions.NAME`` makes a call whose body is JSON
arguments, anything else is text.

Contracts (as ``wire.stream``): no delta ends inside a UTF-8 character; whitespace at a
message's edges is layout; a call whose arguments do not parse, or one cut off, comes back as
``Text`` with its header, markers and body verbatim; text outside any message, or a header that
never reaches a body, is text too. ``<|call|>`` and ``<|return|>`` end generation (they are
end-of-sequence tokens), so a message open at ``finish(complete=True)`` ended there. Stop
strings apply to text only. With ``parallel_tool_calls=False`` the first call ends generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from cortex.neuron.formats.base import named_call
from cortex.neuron.formats.harmony import Harmony, parse_header
from cortex.neuron.wire.detok import Decodes
from cortex.neuron.wire.events import InferenceEvent, Reasoning, ToolCall
from cortex.neuron.wire.output import VisibleText
from cortex.neuron.wire.stream import Feed, Segment, new_call_id

__all__ = ["HarmonyOutput"]

Kind = Literal["reasoning", "text", "call"]


class HarmonyOutput:
    """Token ids → events for harmony output (see the module docstring)."""

    __slots__ = (
        "_body_ids", "_calls", "_deferred", "_ends", "_forced", "_function", "_h",
        "_header", "_header_ids", "_kind", "_parallel", "_reasoning", "_segment", "_state",
        "_text", "_thinking_budget", "_thought", "_tokenizer",
    )  # fmt: skip

    def __init__(
        self,
        tokenizer: Decodes,
        harmony: Harmony,
        *,
        stops: tuple[str, ...] = (),
        tools: Sequence[Mapping[str, Any]] | None = None,
        parallel_tool_calls: bool = True,
        thinking_budget: int | None = None,
        forced: Sequence[int] = (),
        deferred: Sequence[int] = (),
    ) -> None:
        """``forced``: tokens the output must begin with; ``deferred``: tokens forced once the
        first analysis message has ended (a forced call, after the model has reasoned)."""
        del tools  # arguments are JSON: no schema typing needed
        self._tokenizer = tokenizer
        self._h = harmony
        self._ends = {m.id for m in (harmony.end, harmony.call, harmony.return_) if m}
        self._text = VisibleText(stops)
        self._parallel = parallel_tool_calls
        self._thinking_budget = thinking_budget
        self._calls = 0
        self._reasoning = 0
        self._thought = 0
        self._forced = list(forced)
        self._deferred = list(deferred)
        self._header_ids: list[int] = []
        self._body_ids: list[int] = []
        self._kind: Kind = "text"
        self._function: str | None = None
        self._segment = Segment(tokenizer, lead=True)
        self._state: Literal["header", "body", "between"] = "header"
        self._header = ""

    @property
    def reasoning_tokens(self) -> int:
        return self._reasoning

    def forced_next(self) -> int | None:
        """What ``forced`` and ``deferred`` ask for; ``<|end|>`` once the thinking budget is
        spent inside the analysis channel."""
        if self._forced:
            return self._forced[0]
        budget = self._thinking_budget
        if budget is None or self._state != "body" or self._kind != "reasoning":
            return None
        return self._h.end.id if self._thought >= budget else None

    def redirect(self, token_id: int) -> int:
        return token_id  # harmony's forced calls are all forced (``forced``, ``deferred``)

    def feed(self, token_id: int) -> Feed:
        if self._text.stopped:
            return [], None
        if self._forced:  # the engine fed what was forced: move on (or give up if it did not)
            self._forced = self._forced[1:] if token_id == self._forced[0] else []
        h = self._h
        if self._state == "body" and self._kind == "reasoning" and token_id in self._ends:
            self._forced, self._deferred = self._deferred, []  # reasoned: now the call
        if self._state == "header":
            if token_id == h.message.id:
                self._open_body()
            elif token_id == h.start.id:
                self._new_header(token_id)
            elif token_id in self._ends:
                # A header with no body: nothing to show but what it said.
                text, self._state = self._header_text(), "between"
                return self._text.push(text.strip(), final=True)
            else:
                self._header_ids.append(token_id)
            return [], None
        if self._state == "between":
            if token_id in (h.start.id, h.channel.id):
                self._new_header(token_id)
                return [], None
            if token_id in self._ends:
                return [], None
            self._kind, self._function, self._state = "text", None, "body"
            self._segment = Segment(self._tokenizer, lead=True)
        if token_id in self._ends:
            events, stop = self._close(complete=True)
            self._state = "between"
            return events, stop
        if token_id in (h.start.id, h.channel.id):
            events, stop = self._close(complete=True)
            self._new_header(token_id)
            return events, stop
        return self._push(token_id)

    def finish(self, complete: bool = True) -> list[InferenceEvent]:
        if self._text.stopped:
            return []
        if self._state == "header":
            text = self._header_text().strip()
            return self._text.push(text, final=True)[0] if text else []
        if self._state == "body":
            return self._close(complete=complete)[0]
        return []

    # -- messages --------------------------------------------------------------------------

    def _new_header(self, first: int) -> None:
        self._state = "header"
        self._header = ""
        self._header_ids = [first]

    def _header_text(self) -> str:
        return self._header + self._tokenizer.decode(self._header_ids, skip_special_tokens=False)

    def _open_body(self) -> None:
        self._header = self._header_text()
        self._header_ids = []
        header = parse_header(self._header)
        self._function = header.function
        if self._function is not None:
            self._kind = "call"
        elif header.channel == "analysis":
            self._kind = "reasoning"
        else:
            self._kind = "text"
        self._state = "body"
        self._body_ids = []
        self._segment = Segment(self._tokenizer, lead=True)

    def _push(self, token_id: int) -> Feed:
        if self._kind == "call":
            self._body_ids.append(token_id)
            return [], None
        shaped = self._segment.push(token_id)
        if self._kind == "reasoning":
            self._reasoning += 1
            self._thought += 1
            return ([Reasoning(shaped)] if shaped else []), None
        return self._text.push(shaped, final=False) if shaped else ([], None)

    def _close(self, *, complete: bool) -> Feed:
        if self._kind != "call":
            released, _held = self._segment.end()  # trailing whitespace is layout
            if self._kind == "reasoning":
                self._reasoning += 1  # the marker that ends the block
                return ([Reasoning(released)] if released else []), None
            return self._text.push(released, final=True)
        h = self._h
        body = self._tokenizer.decode(self._body_ids, skip_special_tokens=False)
        call = named_call(self._function, body) if complete and self._function else None
        if call is None:
            verbatim = self._header.strip() + h.message.text + body
            if complete and h.call is not None:
                verbatim += h.call.text
            return self._text.push(verbatim, final=True)
        events: list[InferenceEvent] = [ToolCall(self._calls, new_call_id(), *call)]
        self._calls += 1
        if not self._parallel:
            self._text.stopped = True
            return events, h.call.text if h.call is not None else h.end.text
        return events, None
