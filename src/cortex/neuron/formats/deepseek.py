"""DeepSeek tool calls: a section of calls, each between its own markers.

* V3.1 and later (one line in the output)::

      <｜tool▁calls▁begin｜>
      <｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
      <｜tool▁calls▁end｜>

* V3, R1 and the R1 distills: the call's type, then the name, then the arguments in a fence::

      <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
      ```json
      {"city": "Paris"}
      ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

Each call is parsed in whichever shape it has; ``fenced`` (from the template) picks the shape
cortex writes when it opens a call itself. The R1 distills keep their base model's vocabulary,
where these markers are not tokens but text; ``DeepSeekText`` finds the section by its text at
the start of the reply.

Constrained (``call_grammar``), calls are written in the shape ``write`` writes, the arguments
compact JSON matching the tool's schema. The markers inside the section are matched as the
tokens they are (by name: llguidance finds their ids), or as text by ``DeepSeekText``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import (
    Call,
    Marker,
    Opens,
    Schemas,
    ToolSyntax,
    calls_in_sequence,
    named_call,
)
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, repeat, token

__all__ = [
    "CALLS_BEGIN",
    "CALLS_END",
    "CALL_BEGIN",
    "CALL_END",
    "SEP",
    "DeepSeek",
    "DeepSeekText",
]

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"

_CALL = re.compile(re.escape(CALL_BEGIN) + r"(.*?)" + re.escape(CALL_END), re.DOTALL)
_FENCED = re.compile(r"\s*(\S+?)\s*\n?```(?:json)?\s*\n(.*?)\n?```\s*", re.DOTALL)


def _parse_call(match: re.Match[str]) -> Call | None:
    head, found, tail = match.group(1).partition(SEP)
    if not found:
        return None
    fenced = _FENCED.fullmatch(tail)
    if fenced is not None:  # V3: type<sep>name\n```json\nargs\n```
        return named_call(fenced.group(1), fenced.group(2))
    return named_call(head, tail)  # V3.1: name<sep>args


def _parse_calls(body: str) -> list[Call] | None:
    return calls_in_sequence(body, _CALL, _parse_call)


def _opening(name: str | None, fenced: bool) -> str:
    """What follows the section's start to open a call of ``name`` (any tool: ``None``)."""
    if name is None:
        return CALL_BEGIN
    if fenced:
        return f"{CALL_BEGIN}function{SEP}{name}\n```json\n"
    return f"{CALL_BEGIN}{name}{SEP}"


def _write(calls: Sequence[tuple[str, Mapping[str, Any]]], fenced: bool) -> str:
    parts = []
    for name, arguments in calls:
        text = json.dumps(arguments, ensure_ascii=False)
        if fenced:
            parts.append(f"{CALL_BEGIN}function{SEP}{name}\n```json\n{text}\n```{CALL_END}")
        else:
            parts.append(f"{CALL_BEGIN}{name}{SEP}{text}{CALL_END}")
    return CALLS_BEGIN + "".join(parts) + CALLS_END


def _grammar(
    tools: Sequence[GrammarTool],
    parallel: bool,
    fenced: bool,
    section: tuple[Marker, Marker] | None,
) -> str:
    """The call section's rules; ``section``: its markers as tokens (``None``: every marker is
    spelled out as text)."""

    def mark(marker: str) -> str:
        # As a token, <｜…｜> names itself in llguidance's Lark (its id is looked up).
        return lit(marker) if section is None else marker

    if fenced:
        head = f"{lit('function')} {mark(SEP)} "
        named = (
            head + lit(f"{tool.name}\n```json\n") + f" {tool.arguments()} " + lit("\n```")
            for tool in tools
        )
    else:
        named = (f"{lit(tool.name)} {mark(SEP)} {tool.arguments()}" for tool in tools)
    call = f"{mark(CALL_BEGIN)} {alternatives(named)} {mark(CALL_END)}"
    if section is None:
        begin, end = lit(CALLS_BEGIN), lit(CALLS_END)
    else:
        begin, end = token(section[0].id), token(section[1].id)
    return f"calls: {begin} {repeat('call', parallel)} {end}\ncall: {call}\n"


@dataclass(frozen=True, slots=True)
class DeepSeek(ToolSyntax):
    name = "deepseek"
    start: Marker
    end: Marker
    fenced: bool = False  # the V3 shape

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return _parse_calls(body)

    def opening(self, name: str | None) -> str:
        return _opening(name, self.fenced)

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        return _grammar(tools, parallel, self.fenced, (self.start, self.end))

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return _write(calls, self.fenced)


@dataclass(frozen=True, slots=True)
class DeepSeekText(ToolSyntax):
    """DeepSeek's calls where its markers are plain text: a reply that opens with
    ``<｜tool▁calls▁begin｜>`` is a call section running to the end of the output."""

    name = "deepseek"
    by_text = True
    fenced: bool = False

    def opens(self, text: str) -> Opens:
        if text.startswith(CALLS_BEGIN):
            return "yes"
        return "maybe" if CALLS_BEGIN.startswith(text) else "no"

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        body = body.strip()
        if not body.startswith(CALLS_BEGIN):
            return None
        return _parse_calls(body.removeprefix(CALLS_BEGIN).removesuffix(CALLS_END))

    def opening(self, name: str | None) -> str:
        return CALLS_BEGIN + _opening(name, self.fenced)

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return _write(calls, self.fenced)

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        return _grammar(tools, parallel, self.fenced, None)
