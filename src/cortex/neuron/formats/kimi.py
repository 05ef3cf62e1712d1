"""Kimi-K2 tool calls: a section of calls, each with the model's own id ``functions.NAME:IDX``::

    <|tool_calls_section_begin|>
    <|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}
    <|tool_call_end|>
    <|tool_calls_section_end|>

(one line in the output).
The index counts calls across the conversation, so the history must carry ids of that shape
(``history_id``); clients get ids of cortex's own, unique across turns.

Constrained (``call_grammar``), each call names one of the tools with an index of the model's
choosing (it counts across the conversation), the arguments compact JSON matching the tool's
schema; the markers inside the section are matched as the tokens they are (by name: llguidance
finds their ids).
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
    Schemas,
    ToolSyntax,
    calls_in_sequence,
    named_call,
)
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, repeat, token

__all__ = ["ARGUMENT_BEGIN", "CALL_BEGIN", "CALL_END", "Kimi"]

CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"

_CALL = re.compile(
    re.escape(CALL_BEGIN)
    + r"\s*(?:functions\.)?([^\s:<]+?)(?::\d+)?\s*"
    + re.escape(ARGUMENT_BEGIN)
    + r"(.*?)"
    + re.escape(CALL_END),
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Kimi(ToolSyntax):
    name = "kimi"
    start: Marker
    end: Marker

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return calls_in_sequence(body, _CALL, lambda m: named_call(m.group(1), m.group(2)))

    def opening(self, name: str | None) -> str:
        if name is None:
            return CALL_BEGIN + "functions."
        return f"{CALL_BEGIN}functions.{name}:0{ARGUMENT_BEGIN}"

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        # The markers by name (<|tool_call_begin|>): llguidance matches each as its one token.
        named = alternatives(
            f"{lit(f'functions.{tool.name}:')} CALL_INDEX {ARGUMENT_BEGIN} {tool.arguments()}"
            for tool in tools
        )
        section = f"{token(self.start.id)} {repeat('call', parallel)} {token(self.end.id)}"
        return (
            f"calls: {section}\ncall: {CALL_BEGIN} {named} {CALL_END}\nCALL_INDEX: /[0-9]{{1,6}}/\n"
        )

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return (
            self.start.text
            + "".join(
                f"{CALL_BEGIN}functions.{name}:{i}{ARGUMENT_BEGIN}"
                f"{json.dumps(arguments, ensure_ascii=False)}{CALL_END}"
                for i, (name, arguments) in enumerate(calls)
            )
            + self.end.text
        )

    def history_id(self, name: str, index: int) -> str | None:
        return f"functions.{name}:{index}"
