"""Reasoning and tool calls out of generated token ids, for any model with marker tokens.

``probe`` finds the marker tokens in a tokenizer at load time (no model names anywhere):
``<think>``/``</think>`` and ``<tool_call>``/``</tool_call>`` count only when each is ONE token
id, so a marker can be recognised by id and never by text the model spelled out. ``MarkedOutput``
is the ``OutputProcessor`` for such models; one instance per sequence, fed on the engine's worker
thread one generated id at a time::

                 <think>
       +------+ -----------> +-----------+
       | text |              | reasoning |
       +------+ <----------- +-----------+
        |    ^     </think>        |
        |    |                     | <tool_call>
        |    | </tool_call>        v
        |    | (parse body)    +------+
        |    +---------------- | tool |  buffers ids
        +--------------------> +------+
              <tool_call>

``start_state`` reads the rendered prompt to pick the start state: a template that opened
``<think>`` for the model means the output starts inside reasoning. ``start="tool"`` is for a
prompt that already opened the call (a forced tool choice), ``tool_prefix`` the body text the
prompt already holds.

Contracts:

* Text and reasoning are decoded per segment (a marker ends one) with ``IncrementalDecoder``:
  no delta ends inside a UTF-8 character.
* Whitespace around markers is the template's layout, not content: a segment loses its leading
  whitespace when it follows a marker (reasoning always does), and its trailing whitespace
  when it ends at a marker. Trailing whitespace is held back until non-whitespace follows in
  the same segment, so streaming never emits what it must take back. Whitespace the model
  wrote at the very start or the very end of its output, away from markers, is content (but
  reasoning, a channel of its own, is always trimmed).
* A tool-call body that parses (``toolcalls.parse_body``) becomes ``ToolCall`` events, indexed
  0, 1, … across the reply. One that does not, or output that ends inside a call, comes back as
  ``Text`` with the markers and body verbatim: nothing the model wrote is lost.
* A marker id that means nothing in the current state (``</think>`` in text) is shown as its
  text. Output cut off inside reasoning is reasoning.
* Stop strings apply to the visible text channel only (after whitespace trimming, within one
  text segment); ``feed`` returns the one it matched. With ``parallel_tool_calls=False`` the
  first complete call returns the closing marker's text as the stop, so generation ends there.
* After ``feed`` returns a stop, every event has been returned; ``finish`` returns nothing.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cortex.neuron.wire.detok import Decodes, IncrementalDecoder
from cortex.neuron.wire.events import InferenceEvent, Reasoning, Text, ToolCall
from cortex.neuron.wire.output import StopMatcher
from cortex.neuron.wire.toolcalls import ToolFormat, parse_body

__all__ = [
    "MarkedOutput",
    "Markers",
    "StartState",
    "State",
    "new_call_id",
    "probe",
    "start_state",
    "tool_format",
]

State = Literal["text", "reasoning", "tool"]
StartState = Literal["text", "reasoning"]

THINK_START = "<think>"
THINK_END = "</think>"
TOOL_START = "<tool_call>"
TOOL_END = "</tool_call>"


class Tokenizes(Decodes, Protocol):
    """The part of a tokenizer ``probe`` needs."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Markers:
    """Token ids of the marker tokens a tokenizer has (``None``: not a single token)."""

    think_start: int | None = None
    think_end: int | None = None
    tool_start: int | None = None
    tool_end: int | None = None
    think_start_text: str = THINK_START
    think_end_text: str = THINK_END
    tool_start_text: str = TOOL_START
    tool_end_text: str = TOOL_END

    @property
    def reasoning(self) -> bool:
        return self.think_start is not None and self.think_end is not None

    @property
    def tools(self) -> bool:
        return self.tool_start is not None and self.tool_end is not None


def _single_token(tokenizer: Tokenizes, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        return None
    # Some tokenizers register markers as special tokens; they must still decode to themselves.
    if tokenizer.decode(ids, skip_special_tokens=False) != text:
        return None
    return int(ids[0])


def probe(tokenizer: Tokenizes) -> Markers:
    """The marker tokens of ``tokenizer``: each only if it is exactly one token id."""
    return Markers(
        think_start=_single_token(tokenizer, THINK_START),
        think_end=_single_token(tokenizer, THINK_END),
        tool_start=_single_token(tokenizer, TOOL_START),
        tool_end=_single_token(tokenizer, TOOL_END),
    )


def tool_format(chat_template: str | None) -> ToolFormat:
    """The tool-call format a chat template teaches: XML if it mentions ``<function=``."""
    return "xml" if chat_template and "<function=" in chat_template else "hermes"


def start_state(prompt_ids: Sequence[int], markers: Markers) -> StartState:
    """Where output starts: inside reasoning if the prompt's last think block is open."""
    if not markers.reasoning:
        return "text"
    # Scan from the end: the last marker decides, and prompts are long.
    for token in reversed(prompt_ids):
        if token == markers.think_end:
            return "text"
        if token == markers.think_start:
            return "reasoning"
    return "text"


_ALPHANUMERIC = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


# Marker kinds, as small ints so the per-token dispatch is one dict lookup.
_THINK, _THINK_END, _TOOL, _TOOL_END = range(4)

Feed = tuple[list[InferenceEvent], str | None]


class MarkedOutput:
    """Token ids → ``Text``, ``Reasoning`` and ``ToolCall`` events (see the module docstring)."""

    __slots__ = (
        "_calls",
        "_decoder",
        "_fmt",
        "_held",
        "_kinds",
        "_lead",
        "_markers",
        "_parallel",
        "_reasoning",
        "_state",
        "_stopped",
        "_stops",
        "_thinking_budget",
        "_thought",
        "_tokenizer",
        "_tool_ids",
        "_tool_prefix",
        "_tools",
    )

    def __init__(
        self,
        tokenizer: Decodes,
        markers: Markers,
        *,
        start: State = "text",
        tool_prefix: str = "",
        stops: tuple[str, ...] = (),
        tools: Sequence[Mapping[str, Any]] | None = None,
        fmt: ToolFormat = "hermes",
        parallel_tool_calls: bool = True,
        thinking_budget: int | None = None,
    ) -> None:
        # Without the closing marker the state could never be left: everything would vanish
        # into reasoning or a tool body.
        if start == "reasoning" and not markers.reasoning:
            raise ValueError("start='reasoning' needs both think markers")
        if start == "tool" and not markers.tools:
            raise ValueError("start='tool' needs both tool-call markers")
        self._tokenizer = tokenizer
        self._markers = markers
        pairs = (
            (markers.think_start, _THINK),
            (markers.think_end, _THINK_END),
            (markers.tool_start, _TOOL),
            (markers.tool_end, _TOOL_END),
        )
        self._kinds = {token: kind for token, kind in pairs if token is not None}
        self._stops = StopMatcher(stops)
        self._tools = tools
        self._fmt: ToolFormat = fmt
        self._parallel = parallel_tool_calls
        # The prefix belongs to the call the prompt opened, so only to a start inside one.
        self._tool_prefix = tool_prefix if start == "tool" else ""
        self._calls = 0
        self._reasoning = 0
        self._thinking_budget = thinking_budget
        self._thought = 0  # tokens inside reasoning, markers not counted
        self._stopped = False
        self._begin(start)
        # Only text that no marker precedes keeps its leading whitespace.
        self._lead = start != "text"

    @property
    def reasoning_tokens(self) -> int:
        return self._reasoning

    def forced_next(self) -> int | None:
        """The end-of-thinking token once the thinking budget is spent inside reasoning."""
        budget = self._thinking_budget
        if budget is not None and self._state == "reasoning" and self._thought >= budget:
            return self._markers.think_end
        return None

    def feed(self, token_id: int) -> Feed:
        if self._stopped:
            return [], None
        kind = self._kinds.get(token_id)
        state = self._state
        if state == "tool":
            if kind == _TOOL_END:
                return self._end_tool(closed=True)
            if kind == _TOOL:
                # A new call opened before this one closed: this body never will close, so
                # it is text now (else a model looping on <tool_call> streams nothing).
                events, stop = self._end_tool(closed=False)
                if stop is None:
                    self._begin("tool")
                return events, stop
            self._tool_ids.append(token_id)
            return [], None
        if (state == "reasoning" and kind != _TOOL) or kind == _THINK:
            # The block's tokens, both markers included; a <tool_call> ending it is not.
            self._reasoning += 1
        if kind is None:
            if state == "reasoning":
                self._thought += 1
            return self._emit(self._decoder.push(token_id))
        if kind == _TOOL or (kind == _THINK and state == "text"):
            return self._switch("tool" if kind == _TOOL else "reasoning")
        if kind == _THINK_END and state == "reasoning":
            return self._switch("text")
        return self._stray(kind)

    def finish(self) -> list[InferenceEvent]:
        if self._stopped:
            return []
        if self._state == "tool":
            return self._end_tool(closed=False)[0]
        return self._end_segment(at_marker=False)[0]

    # -- segments -------------------------------------------------------------------------

    def _begin(self, state: State) -> None:
        self._state = state
        self._lead = True
        self._held = ""
        if state == "tool":
            self._tool_ids: list[int] = []
        else:
            self._decoder = IncrementalDecoder(self._tokenizer)

    def _switch(self, state: State) -> Feed:
        events, stop = self._end_segment()
        if stop is None:
            self._begin(state)
        return events, stop

    def _shape(self, delta: str) -> str:
        """Apply the whitespace rules to one delta; return what can be released now."""
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

    def _emit(self, delta: str) -> Feed:
        if not delta:
            return [], None
        shaped = self._shape(delta)
        if not shaped:
            return [], None
        if self._state == "reasoning":
            return [Reasoning(shaped)], None
        return self._visible(shaped, final=False)

    def _visible(self, text: str, *, final: bool) -> Feed:
        """Text for the client, through the stop strings; ``final`` ends the segment."""
        released, stop = self._stops.push(text)
        if stop is not None:
            self._stopped = True
        elif final:
            released += self._stops.flush()
        return ([Text(released)] if released else []), stop

    def _end_segment(self, *, at_marker: bool = True) -> Feed:
        events, stop = self._emit(self._decoder.flush())
        held, self._held = self._held, ""  # trailing whitespace at a marker is layout
        if held and not at_marker and stop is None and self._state == "text":
            more, stop = self._visible(held, final=False)  # at the end of output: content
            events += more
        if stop is None and self._state == "text":
            more, stop = self._visible("", final=True)
            events += more
        return events, stop

    def _stray(self, kind: int) -> Feed:
        """A marker that means nothing here: its text joins the current segment."""
        markers = self._markers
        text = (
            markers.think_start_text,
            markers.think_end_text,
            markers.tool_start_text,
            markers.tool_end_text,
        )[kind]
        # Pending bytes go first so the order is kept; a fresh decoder then carries on.
        pending = self._decoder.flush()
        self._decoder = IncrementalDecoder(self._tokenizer)
        return self._emit(pending + text)

    def _end_tool(self, *, closed: bool) -> Feed:
        body = self._tool_prefix + self._tokenizer.decode(self._tool_ids, skip_special_tokens=True)
        self._tool_prefix = ""
        self._begin("text")
        calls = parse_body(body, self._fmt, self._tools) if closed else None
        if calls is None:
            verbatim = self._markers.tool_start_text + body
            if closed:
                verbatim += self._markers.tool_end_text
            return self._visible(verbatim, final=True)
        if not self._parallel:
            # One call was asked for; a body holding several keeps the first.
            calls = calls[:1]
        events: list[InferenceEvent] = []
        for name, arguments in calls:
            events.append(ToolCall(self._calls, new_call_id(), name, arguments))
            self._calls += 1
        if not self._parallel:
            self._stopped = True
            return events, self._markers.tool_end_text
        return events, None
