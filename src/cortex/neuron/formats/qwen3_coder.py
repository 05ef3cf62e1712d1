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

Constrained (``call_grammar``), a call names its parameters in the schema's order, every required
one and no undeclared one. A string parameter (any type that reads back as text: ``string``
among its types, or none declared) is free text that cannot hold the closing tag, held to the
schema's ``enum``/``const``, ``minLength``/``maxLength`` and a plain ``pattern``; any other value
is JSON matching its schema. ``text_value`` writes such values for GLM's tags too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex.neuron.formats.base import (
    Call,
    Marker,
    Schemas,
    ToolSyntax,
    dump_arguments,
    json_call,
    schema_types,
    skip_space,
    typed_value,
    value_text,
)
from cortex.neuron.formats.grammar import GrammarTool, alternatives, json_expr, lit, repeat, token

__all__ = ["Qwen3Coder", "parse_xml", "text_value"]

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

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        return tagged_calls(
            self.start,
            self.end,
            tools,
            parallel,
            separator=lit("\n"),
            head=lambda tool: lit(f"\n<function={tool.name}>\n"),
            pair=lambda key, value: f"{lit(f'<parameter={key}>{chr(10)}')} {value}",
            tail=lit(f"{_FUNCTION_CLOSE}\n"),
            close=_PARAMETER_CLOSE,
            suffix=f"\n{_PARAMETER_CLOSE}\n",
        )

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


# -- values written as text, for call grammars -------------------------------------------------

_REGEX_SPECIAL = frozenset('\\.+*?()|[]{}^$#&-~/"')
_ANY = "(?s:.*)"


def _regex_text(text: str) -> str:
    """``text`` as a literal inside a Lark ``/…/`` regex (``<`` and ``>`` stay bare: escaped,
    the regex dialect reads them as word boundaries)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def _types(schema: Mapping[str, Any]) -> list[str]:
    """The types ``schema`` declares, as the parsers type a value (``schema_types``)."""
    return schema_types([{"name": "f", "parameters": {"properties": {"v": schema}}}])["f"]["v"]


def _string_schema(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The part of ``schema`` that constrains its string values: a string branch of its
    ``anyOf``/``oneOf``, or itself."""
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or ():
            if isinstance(option, Mapping) and "string" in _types(option):
                return _string_schema(option)
    return schema


def _pattern(pattern: Any) -> str | None:
    """A schema's ``pattern`` (matched anywhere in the text, as JSON schema has it) as a whole-
    text regex; ``None`` when anchors stand anywhere but at its ends."""
    if not isinstance(pattern, str):
        return None
    start = pattern.startswith("^")
    end = pattern.endswith("$") and not pattern.endswith("\\$")
    inner = pattern[1 if start else 0 : len(pattern) - 1 if end else len(pattern)]
    if re.search(r"(?<!\\)[\^$]", inner):
        return None
    inner = inner.replace("/", "\\/")
    return ("" if start else _ANY) + f"(?:{inner})" + ("" if end else _ANY)


def _bodies(schema: Mapping[str, Any]) -> Iterator[str]:
    """Regexes a string value must match, besides not holding the closing tag."""
    least, most = schema.get("minLength"), schema.get("maxLength")
    if isinstance(least, int) or isinstance(most, int):
        low = least if isinstance(least, int) else 0
        yield f"(?s:.){{{low},{most if isinstance(most, int) else ''}}}"
    pattern = _pattern(schema.get("pattern"))
    if pattern is not None:
        yield pattern


def tagged_calls(
    start: Marker,
    end: Marker,
    tools: Sequence[GrammarTool],
    parallel: bool,
    *,
    separator: str,
    head: Callable[[GrammarTool], str],
    pair: Callable[[str, str], str],
    tail: str,
    close: str,
    suffix: str,
) -> str:
    """The call rules of a format that writes parameters as tags between ``start`` and ``end``
    (Qwen3-Coder, GLM): per tool, ``head`` (its name), each declared parameter as ``pair(key,
    value)`` in order (the required ones always, the others optionally), then ``tail``; values
    as ``text_value`` writes them, closed by ``close`` and followed by ``suffix``; calls
    separated by ``separator`` (Lark expressions all)."""
    rules: list[str] = []
    terminals: list[str] = []
    for i, tool in enumerate(tools):
        parameters = []
        for j, (key, schema, required) in enumerate(tool.property_schemas()):
            value, lines = text_value(
                tool, schema, close=close, suffix=suffix, terminal=f"CALL_VALUE_{i}_{j}"
            )
            rules.append(f"call_{i}_{j}: {pair(key, value)}")
            terminals += lines
            parameters.append(f"call_{i}_{j}" + ("" if required else "?"))
        rules.append(f"call_{i}: " + " ".join([head(tool), *parameters, *([tail] if tail else [])]))
    named = alternatives(f"call_{i}" for i in range(len(tools)))
    call = f"call: {token(start.id)} {named} {token(end.id)}"
    calls = f"calls: {repeat('call', parallel, separator)}"
    return "\n".join([calls, call, *rules, *terminals]) + "\n"


def text_value(
    tool: GrammarTool, schema: Mapping[str, Any], *, close: str, suffix: str, terminal: str
) -> tuple[str, list[str]]:
    """A parameter of ``tool`` with ``schema``, followed by ``suffix``, for formats that write
    values as text and close them with ``close``: (a Lark expression, the terminal definitions
    it needs, named ``terminal``). JSON matching ``schema``, unless the value reads back as a
    string (see the module docstring): then text without ``close``, held to what of the string
    schema a regex can hold."""
    types = _types(schema)
    after = f" {lit(suffix)}" if suffix else ""
    if types and "string" not in types:
        # The tool's definitions go along, for the references in the parameter's schema.
        defs = {key: tool.schema[key] for key in ("$defs", "definitions") if key in tool.schema}
        return json_expr({**schema, **defs}, lenient=tool.lenient) + after, []
    strings = _string_schema(schema)
    others = {kind for kind in types if kind != "string"}
    choices = strings.get("enum", [strings["const"]] if "const" in strings else None)
    if isinstance(choices, list) and others <= {"null"}:
        texts = [value_text(choice) for choice in choices] + ["null"] * bool(others)
        kept = dict.fromkeys(text for text in texts if close not in text)
        return alternatives(lit(text + suffix) for text in kept), []
    bodies = [f"/{body}/" for body in _bodies(strings)] if not others else []
    body = " & ".join([*(bodies or [f"/{_ANY}/"]), f"~/{_ANY}{_regex_text(close)}{_ANY}/"])
    return terminal, [f"{terminal}: ({body}){after}"]
