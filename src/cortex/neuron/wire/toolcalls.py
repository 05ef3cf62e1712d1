"""Parsing one tool-call body: the text a model wrote between its tool-call markers.

Two formats are in use, and a model may produce either whatever its template says:

* Hermes JSON (Qwen3 and most models)::

      {"name": "get_weather", "arguments": {"city": "Paris"}}

  ``"parameters"`` is accepted for ``"arguments"``, arguments given as a JSON string that holds
  an object are unwrapped, and missing arguments mean ``{}``.

* XML (Qwen3-Coder)::

      <function=get_weather>
      <parameter=city>
      Paris
      </parameter>
      </function>

  Values are text; the newline right after ``<parameter=…>`` and right before ``</parameter>``
  is formatting and dropped. A value is typed by the tool's JSON schema when the schema names a
  type (``integer``, ``number``, ``boolean``, ``object``, ``array``, ``null``); a value that does
  not convert stays a string. Several ``<function=…>`` blocks in one body are several calls.

Everything here is a pure function of its inputs. A body that is not exactly one of these
shapes gives ``None``: the caller then shows the text verbatim rather than guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = ["ToolFormat", "parse_body", "parse_hermes", "parse_xml", "schema_types"]

ToolFormat = Literal["hermes", "xml"]

Call = tuple[str, str]
"""(name, arguments as a JSON object serialised to a string)."""

_FUNCTION_OPEN = re.compile(r"<function=([^>\n]+)>")
_PARAMETER_OPEN = re.compile(r"<parameter=([^>\n]+)>")
_FUNCTION_CLOSE = "</function>"
_PARAMETER_CLOSE = "</parameter>"


def _dump(arguments: Mapping[str, Any]) -> str:
    # Default separators match how chat templates and models write arguments, so a call
    # rendered back into the next prompt looks like what the model itself generated.
    return json.dumps(arguments, ensure_ascii=False)


def parse_hermes(body: str) -> list[Call] | None:
    """Parse a Hermes JSON body; ``None`` unless it is one call object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested model output
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string, as the OpenAI wire format does.
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return [(name, _dump(arguments))]


def schema_types(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, list[str]]]:
    """Tool name → parameter name → the JSON schema types declared for it, in order.

    Accepts OpenAI tool dicts (``{"type": "function", "function": {...}}``) and bare function
    dicts. Anything unexpected in a schema is skipped: typing is a convenience, not a check.
    """
    found: dict[str, dict[str, list[str]]] = {}
    for tool in tools or ():
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            continue
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping):
            continue
        found[function["name"]] = {
            str(key): _types_of(schema) for key, schema in properties.items()
        }
    return found


def _types_of(schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [t for t in declared if isinstance(t, str)]
    # {"anyOf": [{"type": "integer"}, {"type": "null"}]}: Optional[int] as pydantic writes it.
    types: list[str] = []
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            for option in options:
                types.extend(_types_of(option))
    return types


_NOT_CONVERTED = object()


def _convert(value: str, kind: str) -> Any:
    """``value`` as JSON schema type ``kind``, or ``_NOT_CONVERTED``."""
    if kind == "string":
        return value
    text = value.strip()
    if kind == "boolean":
        lowered = text.lower()
        return {"true": True, "false": False}.get(lowered, _NOT_CONVERTED)
    if kind == "null":
        return None if text.lower() in ("null", "none") else _NOT_CONVERTED
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_CONVERTED
    # bool is an int in Python and JSON "true" is not an integer: check it first.
    if isinstance(parsed, bool):
        return _NOT_CONVERTED
    if kind == "integer" and isinstance(parsed, int):
        return parsed
    if kind == "integer" and isinstance(parsed, float) and parsed.is_integer():
        return int(parsed)
    if kind == "number" and isinstance(parsed, int | float):
        return parsed
    if kind == "object" and isinstance(parsed, dict):
        return parsed
    if kind == "array" and isinstance(parsed, list):
        return parsed
    return _NOT_CONVERTED


def _typed(value: str, types: list[str]) -> Any:
    for kind in types:
        converted = _convert(value, kind)
        if converted is not _NOT_CONVERTED:
            return converted
    return value


def _value(raw: str) -> str:
    # Exactly one newline on each side is the format's layout; more is the model's content.
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    return raw


def _skip_space(text: str, at: int) -> int:
    # Whitespace between tags is layout.
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def parse_xml(
    body: str, types: Mapping[str, Mapping[str, list[str]]] | None = None
) -> list[Call] | None:
    """Parse ``<function=…>`` blocks; ``types`` comes from ``schema_types``."""
    calls: list[Call] = []
    at = _skip_space(body, 0)
    while at < len(body):
        opened = _FUNCTION_OPEN.match(body, at)
        if opened is None:
            return None
        name = opened.group(1).strip()
        if not name:
            return None
        known = (types or {}).get(name, {})
        arguments: dict[str, Any] = {}
        at = opened.end()
        # Scan parameter by parameter rather than regex to </function>, so a value may
        # itself contain "</function>" (code that writes XML, for instance).
        while True:
            at = _skip_space(body, at)
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
            arguments[key] = _typed(_value(body[parameter.end() : end]), known.get(key, []))
            at = end + len(_PARAMETER_CLOSE)
        calls.append((name, _dump(arguments)))
        at = _skip_space(body, at)
    return calls or None


def parse_body(
    body: str, fmt: ToolFormat, tools: Sequence[Mapping[str, Any]] | None = None
) -> list[Call] | None:
    """The calls in one tool-call body, trying ``fmt`` first and then the other format.

    The fallback is deliberate: fine-tunes of XML models sometimes answer in JSON and the
    other way round, and the two cannot be confused (a JSON body never starts with ``<``).
    """
    if fmt == "xml":
        return parse_xml(body, schema_types(tools)) or parse_hermes(body)
    return parse_hermes(body) or parse_xml(body, schema_types(tools))
