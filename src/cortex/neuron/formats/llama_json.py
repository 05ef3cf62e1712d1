"""Calls written as bare JSON, with no marker tokens around them.

* **Llama 3.1 / 3.2 / 3.3** (``LlamaJson``): the whole reply is one call object, or several
  separated by ``;``, optionally after the ``<|python_tag|>`` token::

      {"name": "get_weather", "parameters": {"city": "Paris"}}

* **Phi-4-mini** (``JsonList``): the reply is a JSON list of call objects after ``functools``::

      functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]

A reply is a call only if it starts as one: text first and a call later stays text, as in vLLM's
parsers. While the start is ambiguous (``{"na``) the stream holds it back; once it cannot be a
call any more it is released as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import Call, Marker, Opens, Schemas, ToolSyntax, call_object

__all__ = ["JsonList", "LlamaJson"]

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def _opens(text: str, literal: str) -> Opens:
    """Whether ``text`` starts with ``literal`` (whitespace inside it ignored)."""
    squeezed = re.sub(r"\s+", "", text[: len(literal) * 4])
    if squeezed.startswith(literal):
        return "yes"
    return "maybe" if literal.startswith(squeezed) else "no"


def _objects(body: str, separator: str) -> list[Any] | None:
    """The JSON values in ``body``, separated by ``separator`` (and whitespace)."""
    values = []
    at = _SPACE.match(body, 0).end()  # type: ignore[union-attr]
    while at < len(body):
        try:
            value, at = _DECODER.raw_decode(body, at)
        except (ValueError, RecursionError):
            return None
        values.append(value)
        at = _SPACE.match(body, at).end()  # type: ignore[union-attr]
        if body.startswith(separator, at):
            at = _SPACE.match(body, at + len(separator)).end()  # type: ignore[union-attr]
        elif at < len(body):
            return None
    return values


def _calls(values: list[Any] | None) -> list[Call] | None:
    if not values:
        return None
    calls = [call_object(value) for value in values]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


@dataclass(frozen=True, slots=True)
class LlamaJson(ToolSyntax):
    name = "llama_json"
    by_text = True
    start: Marker | None = None  # <|python_tag|>, where the vocabulary has it

    def opens(self, text: str) -> Opens:
        return _opens(text, '{"name"')

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return _calls(_objects(body, ";"))

    def opening(self, name: str | None) -> str:
        return '{"name": "' if name is None else '{"name": ' + json.dumps(name) + ', "parameters":'

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return "; ".join(
            json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)
            for name, arguments in calls
        )


@dataclass(frozen=True, slots=True)
class JsonList(ToolSyntax):
    name = "json_list"
    by_text = True
    prefix: str = "functools"

    def opens(self, text: str) -> Opens:
        return _opens(text, self.prefix + "[")

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        body = body.strip()
        if not body.startswith(self.prefix):
            return None
        values = _objects(body[len(self.prefix) :], "")
        if values is None or len(values) != 1 or not isinstance(values[0], list):
            return None
        return _calls(values[0])

    def opening(self, name: str | None) -> str:
        if name is None:
            return self.prefix + "["
        return self.prefix + '[{"name": ' + json.dumps(name) + ', "arguments":'

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        listed = [{"name": name, "arguments": arguments} for name, arguments in calls]
        return self.prefix + json.dumps(listed, ensure_ascii=False)
