"""Pythonic tool calls: the reply is a Python list of calls with literal arguments::

    [get_weather(city="Paris"), get_time(city="Oslo")]

Llama 3.2's pythonic template and Llama 4 teach it; cortex also teaches it (``describe``) to
models whose template renders no tools at all, such as Gemma 3. Arguments must be literals
(strings, numbers, booleans, None, lists, dicts): nothing is evaluated.

Constrained (``call_grammar``), keyword arguments come in the schema's order, every required one
and no undeclared one, each a literal as ``write`` writes it. A value whose schema admits no
boolean and no None anywhere is written exactly as compact JSON (a double-quoted JSON string is
the same Python string), so llguidance holds it to the whole schema; elsewhere ``True``,
``False`` and ``None`` stand for JSON's words, and containers are held to ``enum``, ``const``,
``anyOf``/``oneOf``, ``type``, ``properties``/``required``, ``additionalProperties``, ``items``
and ``minItems``/``maxItems`` (their other keywords are not enforced).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import Call, Opens, Schemas, ToolSyntax, dump_arguments
from cortex.neuron.formats.grammar import GrammarTool, alternatives, json_expr, lit, repeat

__all__ = ["Pythonic"]

_START = re.compile(r"\[\s*[A-Za-z_][\w.\-]*\s*\(")
_PARTIAL = re.compile(r"\[\s*([A-Za-z_][\w.\-]*\s*)?")


def _call(node: ast.expr) -> Call | None:
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted(node.func)
    if name is None:
        return None
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **kwargs
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return name, dump_arguments(arguments)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def parse_pythonic(body: str) -> list[Call] | None:
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = [_call(node) for node in tree.body.elts]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _literal(value: Any) -> str:
    """``value`` as a Python literal, strings in double quotes as the templates write them."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


@dataclass(frozen=True, slots=True)
class Pythonic(ToolSyntax):
    name = "pythonic"
    by_text = True

    def opens(self, text: str) -> Opens:
        if _START.match(text):
            return "yes"
        return "maybe" if _PARTIAL.fullmatch(text) else "no"

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        return parse_pythonic(body)

    def opening(self, name: str | None) -> str:
        return "[" if name is None else f"[{name}("

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        return (
            "["
            + ", ".join(
                name + "(" + ", ".join(f"{k}={_literal(v)}" for k, v in arguments.items()) + ")"
                for name, arguments in calls
            )
            + "]"
        )

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        rules: dict[str, str] = {}
        named = []
        for tool in tools:
            values = _Values(tool.schema, tool.lenient, rules)
            arguments = [
                (f"{lit(key + '=')} {values.expression(schema)}", required)
                for key, schema, required in tool.property_schemas()
            ]
            listed = " ".join(filter(None, [lit(tool.name + "("), _sequence(arguments), lit(")")]))
            named.append(listed)
        lines = [
            f"calls: {lit('[')} {repeat('call', parallel, lit(', '))} {lit(']')}",
            f"call: {alternatives(named)}",
            *(f"{name}: {body}" for name, body in rules.items()),
        ]
        return "\n".join(lines) + "\n"

    def describe(self, tools: Sequence[Mapping[str, Any]]) -> str:
        listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return (
            "You have access to functions. If you decide to invoke any of the function(s), "
            "you MUST put it in the format of\n"
            "[func_name1(params_name1=params_value1, params_name2=params_value2...), "
            "func_name2(params)]\n"
            "You SHOULD NOT include any other text in the response if you call a function.\n"
            f"Here is a list of functions in JSON format that you can invoke:\n{listing}"
        )

    def write_result(self, name: str, content: str) -> str:
        return f"```tool_output\n{content}\n```"


# -- Python literals matching a JSON schema, for call grammars ---------------------------------

_ANY_RULES = {
    "call_any": (
        'CALL_STRING | CALL_NUMBER | "True" | "False" | "None" '
        '| "[" (call_any (", " call_any)*)? "]" | "{" (call_pair (", " call_pair)*)? "}"'
    ),
    "call_pair": 'CALL_STRING ": " call_any',
    # JSON's strings and numbers, which Python reads alike (but "\\/", which it does not).
    "CALL_STRING": r'/"(\\(["\\bfnrt]|u[0-9a-fA-F]{4})|[^"\\\x00-\x1F\x7F])*"/',
    "CALL_NUMBER": r"/-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/",
}


def _plain(value: Any) -> bool:
    """Whether JSON ``value`` holds no boolean and no null anywhere."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return True


def _sequence(items: Sequence[tuple[str, bool]]) -> str:
    """``items`` (expression, required) in order, ``", "`` between those present."""
    starts = []
    for first, (expression, _) in enumerate(items):
        rest = [f'(", " {e})' + ("" if needed else "?") for e, needed in items[first + 1 :]]
        starts.append(" ".join([expression, *rest]))
        if items[first][1]:
            break
    if not starts:
        return ""
    optional = not any(needed for _, needed in items)
    return alternatives(starts) + ("?" if optional else "")


class _Values:
    """Lark expressions for Python literals matching parts of one tool's schema; the rules they
    need are added to ``rules`` (shared across a grammar's tools)."""

    def __init__(self, root: Mapping[str, Any], lenient: bool, rules: dict[str, str]) -> None:
        self._root = root
        self._lenient = lenient
        self._rules = rules
        self._refs: dict[str, str] = {}
        self._defs = {k: root[k] for k in ("$defs", "definitions") if k in root}

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        node: Any = self._root
        for part in ref[1:].split("/")[1:]:
            key = part.replace("~1", "/").replace("~0", "~")
            node = node.get(key) if isinstance(node, Mapping) else None
        return node

    def _safe(self, schema: Any, seen: frozenset[str] = frozenset()) -> bool:
        """Whether every value ``schema`` admits is free of booleans and nulls."""
        if not isinstance(schema, Mapping):
            return schema is False
        if "$ref" in schema:
            ref = schema["$ref"]
            return ref in seen or self._safe(self._resolve(ref), seen | {str(ref)})
        if "const" in schema or "enum" in schema:
            return _plain(schema.get("enum", [schema.get("const")]))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                return all(self._safe(option, seen) for option in schema[key])
        if isinstance(schema.get("allOf"), list) and any(
            self._safe(option, seen) for option in schema["allOf"]
        ):
            return True
        declared = schema.get("type")
        types = [declared] if isinstance(declared, str) else declared
        if not isinstance(types, list) or not types or {"boolean", "null"} & set(types):
            return False
        if "array" in types and not self._safe(schema.get("items", True), seen):
            return False
        if "object" in types:
            inner = [*(schema.get("properties") or {}).values()]
            inner += [*(schema.get("patternProperties") or {}).values()]
            inner.append(schema.get("additionalProperties", True))
            return all(self._safe(option, seen) for option in inner)
        return True

    def _rule(self, body: str) -> str:
        name = f"call_value_{len(self._rules)}"
        self._rules[name] = body
        return name

    def expression(self, schema: Any) -> str:
        """A Python literal matching ``schema``."""
        if not isinstance(schema, Mapping):
            return self._any()
        if self._safe(schema):
            return json_expr({**schema, **self._defs}, lenient=self._lenient)
        if "$ref" in schema:
            ref = str(schema["$ref"])
            if ref not in self._refs:
                self._refs[ref] = name = self._rule("")
                self._rules[name] = self.expression(self._resolve(ref))
            return self._refs[ref]
        if "const" in schema or "enum" in schema:
            choices = schema.get("enum", [schema.get("const")])
            return alternatives(lit(_literal(choice)) for choice in choices)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                return alternatives(self.expression(option) for option in schema[key])
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for option in schema["allOf"]:
                merged.update(option if isinstance(option, Mapping) else {})
            return self.expression(merged)
        declared = schema.get("type")
        if isinstance(declared, list):
            return alternatives(self.expression({**schema, "type": t}) for t in declared)
        if declared is None and "properties" in schema:
            declared = "object"
        if declared == "boolean":
            return '("True" | "False")'
        if declared == "null":
            return '"None"'
        if declared == "array":
            return self._array(schema)
        if declared == "object":
            return self._object(schema)
        return self._any()

    def _array(self, schema: Mapping[str, Any]) -> str:
        item = self._rule(self.expression(schema.get("items", True)))
        least, most = schema.get("minItems", 0), schema.get("maxItems")
        low = max(least - 1, 0) if isinstance(least, int) else 0
        high = f"{most - 1}" if isinstance(most, int) and most > 0 else ""
        if isinstance(most, int) and most <= 0:
            return lit("[]")
        listed = f'{item} (", " {item}){{{low},{high}}}'
        if not isinstance(least, int) or least <= 0:
            listed = f"({listed})?"
        return f'"[" {listed} "]"'

    def _object(self, schema: Mapping[str, Any]) -> str:
        properties = schema.get("properties")
        required = schema.get("required")
        needed = set(required) if isinstance(required, list) else set()
        if isinstance(properties, Mapping) and properties:
            members = [
                (f"{lit(_literal(str(key)) + ': ')} {self.expression(value)}", key in needed)
                for key, value in properties.items()
            ]
            return f'"{{" {_sequence(members)} "}}"'
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return lit("{}")
        pair = self._rule(f"CALL_STRING {lit(': ')} {self.expression(extra)}")
        self._any()  # CALL_STRING
        return f'"{{" ({pair} (", " {pair})*)? "}}"'

    def _any(self) -> str:
        self._rules.update(_ANY_RULES)
        return "call_any"
