"""Generated token ids → ``Text``, ``Reasoning`` and ``ToolCall`` events, through the model's
``Format`` (``neuron.formats``). One ``FormattedOutput`` per sequence, fed on the engine's worker
thread one id at a time::

                 think.start
       +------+ -----------> +-----------+
       | text |              | reasoning |
       +------+ <----------- +-----------+
        |    ^    think.end        |
        |    |                     | tools.start
        |    | tools.end           v
        |    | (parse body)    +------+
        |    +---------------- | tool |  buffers ids
        +--------------------> +------+
           tools.start, or the reply's first text
           opening like a call (formats without a token)

``start`` is where the output begins: the prompt decides (``start_state``), a template that
opened ``<think>`` puts the output inside reasoning, and ``start="tool"`` is for a prompt that
already opened the call (a forced tool choice), ``tool_prefix`` the body text it holds.
gpt-oss's harmony messages have a parser of their own (``wire.harmony``).

Contracts:

* Text and reasoning are decoded per segment (a marker ends one) with ``IncrementalDecoder``: no
  delta ends inside a UTF-8 character.
* Whitespace around markers is the template's layout, not content: a segment loses its leading
  whitespace when it follows a marker (reasoning always does), and its trailing whitespace when
  it ends at a marker. Trailing whitespace is held back until non-whitespace follows in the same
  segment, so streaming never emits what it must take back. Whitespace the model wrote at the
  very start or the very end of its output, away from markers, is content (but reasoning, a
  channel of its own, is always trimmed).
* A call section closes at the format's end token, or, for formats without one (Mistral,
  Llama's JSON, pythonic), at the end of the output when generation ended on its own (not at
  ``max_tokens``). Its text (special tokens kept) goes to the format's ``parse``: calls become
  ``ToolCall`` events, indexed 0, 1, … across the reply. A section that does not parse, or one
  cut off, comes back as ``Text`` with its markers and body verbatim: nothing is lost.
* For formats whose calls open with text (``ToolSyntax.by_text``), the reply's first visible
  text is held back while it could still open a call, and released as text once it cannot.
* A marker id that means nothing in the current state (``</think>`` in text) is shown as its
  text. Output cut off inside reasoning is reasoning.
* Stop strings apply to the visible text channel only (after whitespace trimming, within one
  text segment); ``feed`` returns the one it matched. With ``parallel_tool_calls=False`` the
  first complete call ends generation (the end marker's text is returned as the stop).
* After ``feed`` returns a stop, every event has been returned; ``finish`` returns nothing.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from cortex.neuron.formats import Format, ThinkSyntax, ToolSyntax
from cortex.neuron.formats.base import schema_types
from cortex.neuron.wire.detok import Decodes, IncrementalDecoder
from cortex.neuron.wire.events import InferenceEvent, Reasoning, ToolCall
from cortex.neuron.wire.output import VisibleText

__all__ = ["Feed", "FormattedOutput", "Segment", "State", "new_call_id", "start_state"]

State = Literal["text", "reasoning", "tool"]
StartState = Literal["text", "reasoning"]
Feed = tuple[list[InferenceEvent], str | None]

_ALPHANUMERIC = string.ascii_letters + string.digits

# Marker kinds, as small ints so the per-token dispatch is one dict lookup.
_THINK, _THINK_END, _TOOL, _TOOL_END = range(4)


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


def start_state(prompt_ids: Sequence[int], think: ThinkSyntax | None) -> StartState:
    """Where output starts: inside reasoning if the prompt's last think block is open."""
    if think is None:
        return "text"
    # Scan from the end: the last marker decides, and prompts are long.
    for token in reversed(prompt_ids):
        if token == think.end.id:
            return "text"
        if token == think.start.id:
            return "reasoning"
    return "text"


class Segment:
    """One run of text or reasoning between markers: decoded without splitting a character,
    with whitespace at its edges treated as layout (see the module docstring)."""

    __slots__ = ("_decoder", "_held", "_lead", "_tokenizer")

    def __init__(self, tokenizer: Decodes, *, lead: bool) -> None:
        self._tokenizer = tokenizer
        self._decoder = IncrementalDecoder(tokenizer)
        self._lead = lead  # leading whitespace is layout: it follows a marker
        self._held = ""

    def push(self, token_id: int) -> str:
        """What can be released now that ``token_id`` is decoded."""
        return self.shape(self._decoder.push(token_id))

    def shape(self, delta: str) -> str:
        if not delta:
            return ""
        if self._lead:
            delta = delta.lstrip()
            if not delta:
                return ""
            self._lead = False
        body = delta.rstrip()
        if not body:
            self._held += delta
            return ""
        released = self._held + body
        self._held = delta[len(body) :]
        return released

    def interrupt(self, text: str) -> str:
        """Pending bytes, then ``text`` (a stray marker's), in order; decoding starts afresh."""
        pending = self._decoder.flush()
        self._decoder = IncrementalDecoder(self._tokenizer)
        return self.shape(pending + text)

    def end(self) -> tuple[str, str]:
        """(what the decoder still held, shaped; the trailing whitespace held back)."""
        released = self.shape(self._decoder.flush())
        held, self._held = self._held, ""
        return released, held


class FormattedOutput:
    """Token ids → events through a ``Format`` (see the module docstring)."""

    __slots__ = (
        "_calls", "_candidate", "_forced", "_kinds", "_opening", "_parallel", "_reasoning",
        "_schemas", "_segment", "_state", "_syntax", "_text", "_think", "_thinking_budget",
        "_thought", "_tokenizer", "_tool_ids", "_tool_marked", "_tool_prefix",
    )  # fmt: skip

    def __init__(
        self,
        tokenizer: Decodes,
        fmt: Format,
        *,
        start: State = "text",
        tool_prefix: str = "",
        stops: tuple[str, ...] = (),
        tools: Sequence[Mapping[str, Any]] | None = None,
        parallel_tool_calls: bool = True,
        thinking_budget: int | None = None,
        opening: Sequence[int] = (),
    ) -> None:
        # Without a way out of the start state everything would vanish into it.
        if start == "reasoning" and fmt.think is None:
            raise ValueError("start='reasoning' needs a reasoning syntax")
        if start == "tool" and fmt.tools is None:
            raise ValueError("start='tool' needs a tool-call syntax")
        self._tokenizer = tokenizer
        self._think = fmt.think
        self._syntax: ToolSyntax | None = fmt.tools
        kinds: dict[int, int] = {}
        if fmt.think is not None:
            kinds[fmt.think.start.id] = _THINK
            kinds[fmt.think.end.id] = _THINK_END
        if fmt.tools is not None and fmt.tools.start is not None:
            kinds[fmt.tools.start.id] = _TOOL
        if fmt.tools is not None and fmt.tools.end is not None:
            kinds[fmt.tools.end.id] = _TOOL_END
        self._kinds = kinds
        self._text = VisibleText(stops)
        self._schemas = schema_types(tools)
        self._parallel = parallel_tool_calls
        self._calls = 0
        self._reasoning = 0
        self._thinking_budget = thinking_budget
        self._thought = 0  # tokens inside reasoning, markers not counted
        # A forced call's opening, put in place of the first token the model writes outside
        # reasoning that is not whitespace (``redirect``): the model reasons freely first.
        self._opening = list(opening)
        self._forced: list[int] = []
        self._candidate: list[int] | None = None
        self._tool_ids: list[int] = []
        self._begin(start, lead=start != "text")
        # The prefix belongs to the call the prompt opened, so only to a start inside one; a
        # call opened with text has no start marker to show if it does not parse.
        self._tool_prefix = tool_prefix if start == "tool" else ""
        self._tool_marked = fmt.tools is not None and not (fmt.tools.by_text and start == "tool")

    @property
    def reasoning_tokens(self) -> int:
        return self._reasoning

    def forced_next(self) -> int | None:
        """The end-of-thinking token once the thinking budget is spent inside reasoning; the
        rest of a forced call's opening once it has begun."""
        if self._forced:
            return self._forced[0]
        budget, think = self._thinking_budget, self._think
        if budget is not None and think is not None and self._state == "reasoning":
            return think.end.id if self._thought >= budget else None
        return None

    def redirect(self, token_id: int) -> int:
        """The token to take instead of the sampled one: the start of a forced call's opening,
        once the model writes something other than whitespace or the start of reasoning."""
        if not self._opening or self._state != "text" or self._forced:
            return token_id
        if self._think is not None and token_id == self._think.start.id:
            return token_id  # it reasons first; the call opens after
        if self._tokenizer.decode([token_id], skip_special_tokens=False).isspace():
            return token_id
        # All of it is forced now, the first token included: feed() takes them off in turn.
        self._forced, self._opening = self._opening, []
        return self._forced[0]

    def feed(self, token_id: int) -> Feed:
        if self._text.stopped:
            return [], None
        if self._forced:  # the engine fed what was forced: move on (or give up if it did not)
            self._forced = self._forced[1:] if token_id == self._forced[0] else []
        kind = self._kinds.get(token_id)
        state = self._state
        if state == "tool":
            return self._feed_tool(token_id, kind)
        events: list[InferenceEvent] = []
        if self._candidate is not None:
            if kind is None:
                return self._consider(token_id)
            events, stop = self._release_candidate()  # a marker: the reply did not open a call
            if stop is not None:
                return events, stop
        if (state == "reasoning" and kind != _TOOL) or kind == _THINK:
            # The block's tokens, both markers included; a tool start ending it is not.
            self._reasoning += 1
        if kind is None:
            if state == "reasoning":
                self._thought += 1
            more, stop = self._emit(self._segment.push(token_id))
        elif kind == _TOOL or (kind == _THINK and state == "text"):
            more, stop = self._switch("tool" if kind == _TOOL else "reasoning")
        elif kind == _THINK_END and state == "reasoning":
            more, stop = self._switch("text")
        else:
            more, stop = self._stray(token_id)
        return events + more, stop

    def finish(self, complete: bool = True) -> list[InferenceEvent]:
        """Events still pending at the end of generation; ``complete``: it ended on its own
        (an end-of-sequence token), not at a length limit."""
        if self._text.stopped:
            return []
        if self._state == "tool":
            syntax = self._syntax
            runs_to_end = syntax is not None and syntax.end is None
            return self._close(closed=complete and runs_to_end)[0]
        events: list[InferenceEvent] = []
        if self._candidate is not None:
            events, stop = self._release_candidate()
            if stop is not None:
                return events
        return events + self._end_segment(at_marker=False)[0]

    # -- segments -------------------------------------------------------------------------

    def _begin(self, state: State, *, lead: bool = True) -> None:
        self._state = state
        if state == "tool":
            self._tool_ids = []
            self._tool_marked = True
            return
        self._segment = Segment(self._tokenizer, lead=lead)
        syntax = self._syntax
        # Formats whose calls open with text: hold the reply's first text while it may be one.
        by_text = syntax is not None and syntax.by_text
        self._candidate = [] if state == "text" and by_text and not self._text.replied else None

    def _switch(self, state: State) -> Feed:
        events, stop = self._end_segment()
        if stop is None:
            self._begin(state)
        return events, stop

    def _emit(self, shaped: str) -> Feed:
        if not shaped:
            return [], None
        if self._state == "reasoning":
            return [Reasoning(shaped)], None
        return self._visible(shaped, final=False)

    def _visible(self, text: str, *, final: bool) -> Feed:
        return self._text.push(text, final=final)

    def _end_segment(self, *, at_marker: bool = True) -> Feed:
        released, held = self._segment.end()
        events, stop = self._emit(released)
        if held and not at_marker and stop is None and self._state == "text":
            more, stop = self._visible(held, final=False)  # at the end of output: content
            events += more
        if stop is None and self._state == "text":
            more, stop = self._visible("", final=True)
            events += more
        return events, stop

    def _stray(self, token_id: int) -> Feed:
        """A marker that means nothing here: its text joins the current segment."""
        text = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return self._emit(self._segment.interrupt(text))

    # -- a reply that may open a call with text --------------------------------------------

    def _consider(self, token_id: int) -> Feed:
        ids = self._candidate
        syntax = self._syntax
        if ids is None or syntax is None:  # only called while a candidate is held
            return [], None
        ids.append(token_id)
        # A character still split across tokens decodes to U+FFFD: judge the text before it.
        text = self._tokenizer.decode(ids, skip_special_tokens=True).lstrip().rstrip("\ufffd")
        verdict = syntax.opens(text) if text else "maybe"
        if verdict == "maybe":
            return [], None
        self._candidate = None
        if verdict == "yes":
            self._begin("tool")
            self._tool_ids = ids
            self._tool_marked = False
            return [], None
        return self._replay(ids)

    def _release_candidate(self) -> Feed:
        ids, self._candidate = self._candidate or [], None
        return self._replay(ids)

    def _replay(self, ids: list[int]) -> Feed:
        events: list[InferenceEvent] = []
        for token in ids:
            more, stop = self._emit(self._segment.push(token))
            events += more
            if stop is not None:
                return events, stop
        return events, None

    # -- call sections ---------------------------------------------------------------------

    def _feed_tool(self, token_id: int, kind: int | None) -> Feed:
        syntax = self._syntax
        if kind == _TOOL_END:
            return self._close(closed=True)
        if kind == _TOOL and syntax is not None and syntax.end is not None:
            # A new call opened before this one closed: this body never will close, so it is
            # text now (else a model looping on the start marker streams nothing).
            events, stop = self._close(closed=False)
            if stop is None:
                self._begin("tool")
            return events, stop
        self._tool_ids.append(token_id)
        return [], None

    def _close(self, *, closed: bool) -> Feed:
        syntax = self._syntax
        body = self._tool_prefix + self._tokenizer.decode(self._tool_ids, skip_special_tokens=False)
        marked = self._tool_marked
        self._tool_prefix = ""
        self._begin("text")
        calls = syntax.parse(body, self._schemas) if closed and syntax is not None else None
        if calls is None:
            if syntax is not None and marked and syntax.start is not None:
                body = syntax.start.text + body
            if syntax is not None and closed and syntax.end is not None:
                body += syntax.end.text
            shaped = self._segment.shape(body) if not marked else body
            return self._visible(shaped + self._segment.end()[1], final=True)
        if not self._parallel:
            calls = calls[:1]  # one call was asked for; a body holding several keeps the first
        events: list[InferenceEvent] = []
        for name, arguments in calls:
            events.append(ToolCall(self._calls, new_call_id(), name, arguments))
            self._calls += 1
        if not self._parallel:
            self._text.stopped = True
            end = syntax.end.text if syntax is not None and syntax.end is not None else ""
            return events, end
        return events, None
