"""GLM-4.5 / 4.6 tool calls: the name, then key/value pairs as tags, in ``<tool_call>`` blocks::

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

The template writes string values as they are and every other value as JSON, so a value is
typed by the tool's JSON schema (an undeclared parameter stays a string).

Constrained (``call_grammar``), the tags are matched as the tokens they are in GLM's vocabulary
(by name: llguidance finds their ids), parameters come in the schema's order, every required one
and no undeclared one, and a value that reads back as a string is text without
``</arg_value>`` (``qwen3_coder.text_value``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import (
    Call,
    Marker,
    Schemas,
    ToolSyntax,
    dump_arguments,
    typed_value,
    value_text,
)
from cortex.neuron.formats.grammar import GrammarTool, lit
from cortex.neuron.formats.qwen3_coder import tagged_calls

__all__ = ["Glm"]

_KEY, _KEY_END, _VALUE, _VALUE_END = "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"
_NEWLINE = lit("\n")
_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def parse_glm(body: str, schemas: Schemas) -> list[Call] | None:
    first = body.find("<arg_key>")
    head = body if first < 0 else body[:first]
    name = head.strip()
    if not name or "\n" in name or "<" in name or "{" in name:
        return None
    known = schemas.get(name, {})
    arguments: dict[str, Any] = {}
    at = len(head)
    while at < len(body):
        pair = _PAIR.match(body, at)
        if pair is None:
            if body[at:].strip():
                return None
            break
        key = pair.group(1).strip()
        arguments[key] = typed_value(pair.group(2), known.get(key, []))
        at = pair.end()
    return [(name, dump_arguments(arguments))]


@dataclass(frozen=True, slots=True)
class Glm(ToolSyntax):
    name = "glm"
    start: Marker
    end: Marker

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return parse_glm(body, schemas)

    def opening(self, name: str | None) -> str:
        return "" if name is None else f"{name}\n"

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        # The tags by name (<arg_key>): llguidance matches each as its one token.
        return tagged_calls(
            self.start,
            self.end,
            tools,
            parallel,
            separator=_NEWLINE,
            head=lambda tool: lit(tool.name + "\n"),
            pair=lambda key, value: (
                f"{_KEY} {lit(key)} {_KEY_END} {_NEWLINE} {_VALUE} {value} {_VALUE_END} {_NEWLINE}"
            ),
            tail="",
            close=_VALUE_END,
            suffix="",
        )

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return "\n".join(
            f"{self.start.text}{name}\n"
            + "".join(
                f"{_KEY}{key}{_KEY_END}\n{_VALUE}{value_text(value)}{_VALUE_END}\n"
                for key, value in arguments.items()
            )
            + self.end.text
            for name, arguments in calls
        )
