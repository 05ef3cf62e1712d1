"""Hermes JSON tool calls (Qwen3, QwQ, Hermes 2/3, and most ChatML fine-tunes)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

One call per ``<tool_call>`` block; ``"parameters"`` is accepted for ``"arguments"``. A block that
holds the XML form instead (``<function=…>``) is parsed as that: fine-tunes of one family answer
in the other's form, and the two cannot be confused (a JSON body never starts with ``<``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import Call, Marker, Schemas, ToolSyntax, json_call
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, repeat, token
from cortex.neuron.formats.qwen3_coder import parse_xml

__all__ = ["Hermes"]


@dataclass(frozen=True, slots=True)
class Hermes(ToolSyntax):
    name = "hermes"
    start: Marker
    end: Marker

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return json_call(body) or parse_xml(body, schemas)

    def opening(self, name: str | None) -> str:
        if name is None:
            return "\n"
        # No space after the colon: BPE vocabularies attach the space to the next token
        # (' {"'), so a prompt ending in a bare space leads the model astray.
        return '\n{"name": ' + json.dumps(name) + ', "arguments":'

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        named = alternatives(
            lit('\n{"name": ' + json.dumps(tool.name) + ', "arguments": ')
            + f" {tool.arguments()} "
            + lit("}\n")
            for tool in tools
        )
        call = f"{token(self.start.id)} {named} {token(self.end.id)}"
        return f"calls: {repeat('call', parallel, lit(chr(10)))}\ncall: {call}\n"

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return "\n".join(
            f"{self.start.text}\n"
            + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            + f"\n{self.end.text}"
            for name, arguments in calls
        )
