"""The XML tool-call form of Qwen3-Coder, inside ``<tool_call>`` blocks::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Values are text; the newline right after ``<parameter=…>`` and right before ``</parameter>`` is
layout and dropped. A value is typed by the tool's JSON schema when the schema names a type; a
value that does not convert stays a string. Several ``<function=…>`` blocks in one body are
several calls. A JSON body in a ``<tool_call>`` block is parsed as Hermes JSON.
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
    json_call,
    skip_space,
    typed_value,
    value_text,
)

__all__ = ["Qwen3Coder", "parse_xml"]

_FUNCTION_OPEN = re.compile(r"<function=([^>\n]+)>")
_PARAMETER_OPEN = re.compile(r"<parameter=([^>\n]+)>")
_FUNCTION_CLOSE = "</function>"
_PARAMETER_CLOSE = "</parameter>"


def _value(raw: str) -> str:
    # Exactly one newline on each side is the format's layout; more is the model's content.
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    return raw


def parse_xml(body: str, schemas: Schemas | None = None) -> list[Call] | None:
    """``<function=…>`` blocks → calls; ``None`` unless the body is exactly such blocks."""
    calls: list[Call] = []
    at = skip_space(body, 0)
    while at < len(body):
        opened = _FUNCTION_OPEN.match(body, at)
        if opened is None:
            return None
        name = opened.group(1).strip()
        if not name:
            return None
        known = (schemas or {}).get(name, {})
        arguments: dict[str, Any] = {}
        at = opened.end()
        # Scan parameter by parameter rather than regex to </function>, so a value may
        # itself contain "</function>" (code that writes XML, for instance).
        while True:
            at = skip_space(body, at)
            if body.startswith(_FUNCTION_CLOSE, at):
                at += len(_FUNCTION_CLOSE)
                break
            parameter = _PARAMETER_OPEN.match(body, at)
            if parameter is None:
                return None
            end = body.find(_PARAMETER_CLOSE, parameter.end())
            if end < 0:
                return None
            key = parameter.group(1).strip()
            arguments[key] = typed_value(_value(body[parameter.end() : end]), known.get(key, []))
            at = end + len(_PARAMETER_CLOSE)
        calls.append((name, dump_arguments(arguments)))
        at = skip_space(body, at)
    return calls or None


@dataclass(frozen=True, slots=True)
class Qwen3Coder(ToolSyntax):
    name = "qwen3_coder"
    start: Marker
    end: Marker

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return parse_xml(body, schemas) or json_call(body)

    def opening(self, name: str | None) -> str:
        return "\n" if name is None else f"\n<function={name}>\n"

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        blocks = []
        for name, arguments in calls:
            parameters = "".join(
                f"<parameter={key}>\n{value_text(value)}\n</parameter>\n"
                for key, value in arguments.items()
            )
            blocks.append(
                f"{self.start.text}\n<function={name}>\n{parameters}</function>\n{self.end.text}"
            )
        return "\n".join(blocks)
