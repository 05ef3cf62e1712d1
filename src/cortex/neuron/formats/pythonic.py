"""Pythonic tool calls: the reply is a Python list of calls with literal arguments::

    [get_weather(city="Paris"), get_time(city="Oslo")]

Llama 3.2's pythonic template and Llama 4 teach it; cortex also teaches it (``describe``) to
models whose template renders no tools at all, such as Gemma 3. Arguments must be literals
(strings, numbers, booleans, None, lists, dicts): nothing is evaluated.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import Call, Opens, Schemas, ToolSyntax, dump_arguments

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
