"""Calls written as bare JSON, with no marker tokens around them.

* **Llama 3.1 / 3.2 / 3.3** (``LlamaJson``): the whole reply is one call object, or several
  separated by ``;``, optionally after the ``<|python_tag|>`` token::

      {"name": "get_weather", "parameters": {"city": "Paris"}}

* **Phi-4-mini** (``JsonList``): the reply is a JSON list of call objects after ``functools``::

      functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]

A reply is a call only if it starts as one: text first and a call later stays text, as in vLLM's
parsers. While the start is ambiguous (``{"na``) the stream holds it back; once it cannot be a
call any more it is released as text.

Constrained (``call_grammar``), a call is written as ``write`` writes it: keys in that order,
the arguments compact JSON matching the tool's schema.
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
    call_objects,
    skip_space,
)
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, repeat, token

__all__ = ["JsonList", "LlamaJson", "object_grammar"]

_DECODER = json.JSONDecoder()


def _opens(text: str, literal: str) -> Opens:
    """Whether ``text`` starts with ``literal`` (whitespace inside it ignored)."""
    squeezed = re.sub(r"\s+", "", text[: len(literal) * 4])
    if squeezed.startswith(literal):
        return "yes"
    return "maybe" if literal.startswith(squeezed) else "no"


def object_grammar(tools: Sequence[GrammarTool], key: str) -> str:
    """A Lark expression: a call object ``{"name": …, key: {…}}`` of one of ``tools``, spaced
    as ``json.dumps`` writes it."""
    return alternatives(
        lit(f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, "{key}": ')
        + f" {tool.arguments()} "
        + lit("}")
        for tool in tools
    )


def _objects(body: str, separator: str) -> list[Any] | None:
    """The JSON values in ``body``, separated by ``separator`` (and whitespace)."""
    values = []
    at = skip_space(body, 0)
    while at < len(body):
        try:
            value, at = _DECODER.raw_decode(body, at)
        except (ValueError, RecursionError):
            return None
        values.append(value)
        at = skip_space(body, at)
        if body.startswith(separator, at):
            at = skip_space(body, at + len(separator))
        elif at < len(body):
            return None
    return values


@dataclass(frozen=True, slots=True)
class LlamaJson(ToolSyntax):
    name = "llama_json"
    by_text = True
    start: Marker | None = None  # <|python_tag|>, where the vocabulary has it

    def opens(self, text: str) -> Opens:
        return _opens(text, '{"name"')

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        values = _objects(body, ";")
        return call_objects(values) if values is not None else None

    def opening(self, name: str | None) -> str:
        return '{"name": "' if name is None else '{"name": ' + json.dumps(name) + ', "parameters":'

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        tag = f"{token(self.start.id)}? " if self.start is not None else ""
        return (
            f"calls: {tag}{repeat('call', parallel, lit('; '))}\n"
            f"call: {object_grammar(tools, 'parameters')}\n"
        )

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
        return call_objects(values[0])

    def opening(self, name: str | None) -> str:
        if name is None:
            return self.prefix + "["
        return self.prefix + '[{"name": ' + json.dumps(name) + ', "arguments":'

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        listed = repeat("call", parallel, lit(", "))
        return (
            f"calls: {lit(self.prefix + '[')} {listed} {lit(']')}\n"
            f"call: {object_grammar(tools, 'arguments')}\n"
        )

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        listed = [{"name": name, "arguments": arguments} for name, arguments in calls]
        return self.prefix + json.dumps(listed, ensure_ascii=False)
