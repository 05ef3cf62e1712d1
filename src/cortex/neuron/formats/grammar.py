"""Pieces of llguidance's Lark dialect, for the grammars that constrain what a model writes.

A family's ``ToolSyntax.call_grammar`` writes the rules of its call section (rule ``calls``,
helpers named ``call…``) with these: marker tokens by id
(``<[151657]>``: a special token is matched as that one id, never as text the model spells out),
literals, and each tool's arguments as an embedded JSON schema (``%json {…}``). The grammar of a
whole reply is put together in ``neuron.structured.rules``.

JSON is written compactly, the way ``json.dumps`` writes it (``", "`` between items, ``": "``
after keys): no other whitespace is allowed inside it, so a model cannot spend its tokens on
blanks.

Everything here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GrammarTool", "alternatives", "json_expr", "lit", "repeat", "token"]

# llguidance's JSON options: compact separators, no free whitespace.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

# A tool without parameters takes an empty object.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class GrammarTool:
    """A tool a constrained call may name: its arguments' JSON schema; ``lenient``: keywords
    the grammar library does not know are ignored rather than refused (tools not marked
    ``strict``)."""

    name: str
    schema: Mapping[str, Any]
    lenient: bool = False

    def arguments(self) -> str:
        """The arguments object as a Lark expression."""
        return json_expr(self.schema, lenient=self.lenient)

    def property_schemas(self) -> list[tuple[str, Mapping[str, Any], bool]]:
        """(name, schema, required) of each declared parameter, in order."""
        properties = self.schema.get("properties")
        required = self.schema.get("required")
        needed = set(required) if isinstance(required, list) else set()
        if not isinstance(properties, Mapping):
            return []
        return [
            (str(key), value if isinstance(value, Mapping) else {}, key in needed)
            for key, value in properties.items()
        ]


def lit(text: str) -> str:
    """A Lark string literal for ``text``."""
    return json.dumps(text, ensure_ascii=False)


def token(token_id: int) -> str:
    """One special token, by id."""
    return f"<[{token_id}]>"


def json_expr(schema: Mapping[str, Any], *, lenient: bool = False) -> str:
    """A JSON value matching ``schema``, written compactly."""
    options = dict(JSON_OPTIONS)
    if lenient:
        options["lenient"] = True
    return "%json " + json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)


def alternatives(expressions: Iterable[str]) -> str:
    """One of ``expressions``."""
    return "(" + " | ".join(expressions) + ")"


def repeat(rule: str, parallel: bool, separator: str = "") -> str:
    """Rule ``rule`` once, or (``parallel``) one or more times with ``separator`` (a Lark
    expression) between."""
    if not parallel:
        return rule
    return f"{rule} ({separator + ' ' if separator else ''}{rule})*"
