"""Mistral tool calls after the ``[TOOL_CALLS]`` token, which has no closing token: a call
section runs to the end of the reply.

* Newer tokenizers (Mistral Small 3.2, Devstral, Magistral, Ministral 3), with an ``[ARGS]``
  token; each call opens with its own ``[TOOL_CALLS]``, and some write a ``[CALL_ID]``::

      [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"city": "Oslo"}

* Older ones (Mistral 7B v0.3, Nemo): one JSON list of call objects::

      [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]

Both shapes are parsed whichever the vocabulary suggests; ``opening`` writes the one it has.
Ids in the model's history must be nine letters and digits; ``history_id`` leaves ids to the
prompt side, which maps the client's ids to that shape.

Constrained (``call_grammar``), calls are written in the shape ``write`` writes for this
vocabulary (no ``[CALL_ID]``), the arguments compact JSON matching the tool's schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import (
    Call,
    Marker,
    Schemas,
    ToolSyntax,
    call_objects,
    load_json,
    named_call,
)
from cortex.neuron.formats.grammar import GrammarTool, alternatives, lit, repeat, token
from cortex.neuron.formats.llama_json import object_grammar

__all__ = ["Mistral"]


@dataclass(frozen=True, slots=True)
class Mistral(ToolSyntax):
    name = "mistral"
    start: Marker
    args: Marker | None = None  # [ARGS]: the name-then-arguments shape
    call_id: Marker | None = None  # [CALL_ID]

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        if body.lstrip().startswith(("[", "{")):
            return _parse_json(body)
        return self._parse_named(body)

    def _parse_named(self, body: str) -> list[Call] | None:
        args = self.args.text if self.args else "[ARGS]"
        call_id = self.call_id.text if self.call_id else "[CALL_ID]"
        calls: list[Call] = []
        for part in body.split(self.start.text):
            if not part.strip() and calls:
                continue  # the layout between two calls
            name, found, rest = part.partition(args)
            if not found:
                return None
            name = name.partition(call_id)[0].strip()
            if not name or any(c.isspace() or c in "{[<" for c in name):
                return None
            call = named_call(name, rest)
            if call is None:
                return None
            calls.append(call)
        return calls or None

    def opening(self, name: str | None) -> str:
        if self.args is not None:
            return "" if name is None else name + self.args.text
        if name is None:
            return '[{"name": "'
        return '[{"name": ' + json.dumps(name) + ', "arguments":'

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        start = token(self.start.id)
        if self.args is not None:
            args = token(self.args.id)
            named = alternatives(f"{lit(tool.name)} {args} {tool.arguments()}" for tool in tools)
            return f"calls: {repeat('call', parallel)}\ncall: {start} {named}\n"
        listed = repeat("call", parallel, lit(", "))
        objects = object_grammar(tools, "arguments")
        return f"calls: {start} {lit('[')} {listed} {lit(']')}\ncall: {objects}\n"

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        if self.args is not None:
            return "".join(
                self.start.text + name + self.args.text + json.dumps(arguments, ensure_ascii=False)
                for name, arguments in calls
            )
        listed = [{"name": name, "arguments": arguments} for name, arguments in calls]
        return self.start.text + json.dumps(listed, ensure_ascii=False)


def _parse_json(body: str) -> list[Call] | None:
    try:
        data = load_json(body.strip())
    except ValueError:
        return None
    return call_objects(data if isinstance(data, list) else [data])
