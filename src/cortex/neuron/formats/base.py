"""What every output format shares: marker tokens, the tool-call syntax contract, typed values.

A model family writes reasoning and tool calls in its own syntax. ``ToolSyntax`` is the contract
each format module (``hermes``, ``qwen3_coder``, ``glm``, ``llama_json``, ``mistral``,
``deepseek``, ``kimi``, ``pythonic``) fulfils, so that the stream parser (``wire.stream``), the
steering of ``tool_choice`` (``neuron.prepare``) and the prompt side (``prompt``) need no per-family
code:

* **Where a call section is.** It opens at the ``start`` token, or, for formats without one, when
  the reply's first visible text ``opens`` like a call (Llama's ``{"name"``, a pythonic ``[f(``).
  It closes at the ``end`` token, or, without one, at the end of the output.
* **What a section holds.** ``parse`` turns the section's text (special tokens kept) into calls,
  or ``None`` when it is not exactly this format's shape: the caller then shows it verbatim.
* **How a constrained call is written.** ``call_grammar`` gives the call section as a grammar
  (``tool_choice`` required or named, ``strict`` tools, structured outputs).
* **How cortex writes calls itself.** ``opening`` is the text that opens a call in the model's
  own form (``tool_choice`` required or named); ``write`` renders calls for a template that drops
  them from history; ``describe`` tells a model whose template ignores ``tools`` what it has and
  how to call it; ``history_id`` gives a call id in the shape the model itself writes.

Everything here is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from cortex.neuron.formats.grammar import GrammarTool

__all__ = [
    "Call",
    "Marker",
    "Opens",
    "Schemas",
    "ThinkSyntax",
    "ToolSyntax",
    "call_object",
    "call_objects",
    "calls_in_sequence",
    "dump_arguments",
    "json_call",
    "load_json",
    "named_call",
    "schema_types",
    "skip_space",
    "typed_value",
    "value_text",
]

Call = tuple[str, str]
"""(name, arguments as a JSON object serialised to a string)."""

Schemas = Mapping[str, Mapping[str, list[str]]]
"""Tool name → parameter name → the JSON schema types declared for it (``schema_types``)."""

Opens = Literal["yes", "maybe", "no"]


@dataclass(frozen=True, slots=True)
class Marker:
    """A marker that is exactly one token: its id, and the text it decodes to."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class ThinkSyntax:
    """A reasoning block between two marker tokens (``<think>``, Mistral's ``[THINK]``)."""

    name: str
    start: Marker
    end: Marker


class ToolSyntax:
    """One family's tool-call syntax (see the module docstring). Subclasses set ``name`` and
    override what differs; instances are immutable once built."""

    name: ClassVar[str] = ""
    # A section may open with text at the start of the reply instead of (or besides) a token.
    by_text: ClassVar[bool] = False
    start: Marker | None = None
    end: Marker | None = None

    def opens(self, text: str) -> Opens:
        """For formats without a start token: whether a reply beginning with ``text`` (leading
        whitespace removed) is a call ("yes"), could still become one ("maybe"), or is not."""
        return "no"

    def parse(self, body: str, schemas: Schemas) -> list[Call] | None:
        raise NotImplementedError

    def opening(self, name: str | None) -> str:
        """Text after the start token that opens a call of ``name`` (any tool when ``None``)."""
        return ""

    def write(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        """``calls`` as the model writes them, markers included."""
        raise NotImplementedError

    def describe(self, tools: Sequence[Mapping[str, Any]]) -> str:
        """System-prompt text declaring ``tools`` and how to call them, for templates that do
        not render tools themselves."""
        listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        example = self.write([("function_name", {"argument": "value"})])
        return (
            "# Tools\n\nYou may call one or more of these functions to help with the user's "
            f"request:\n{listing}\n\nTo call functions, reply with exactly this form and "
            f"nothing else:\n{example}"
        )

    def write_result(self, name: str, content: str) -> str:
        """A tool result as user text, for templates without a tool role."""
        return f"Result of {name}:\n{content}"

    def call_grammar(self, tools: Sequence[GrammarTool], parallel: bool) -> str | None:
        """Lark rules (llguidance's dialect, ``formats.grammar``) defining rule ``calls``: this
        format's call section holding one call of one of ``tools`` (one or more where
        ``parallel``), each call's arguments matching its tool's schema, markers by token id.
        ``None``: cortex has no grammar for this format (a forced call is then steered)."""
        return None

    def history_id(self, name: str, index: int) -> str | None:
        """The id the model itself gives the ``index``-th call of a conversation, when its
        format has one (Kimi's ``functions.NAME:IDX``); ``None``: any id will do."""
        return None


def dump_arguments(arguments: Mapping[str, Any]) -> str:
    # Default separators match how chat templates and models write arguments, so a call
    # rendered back into the next prompt looks like what the model itself generated.
    return json.dumps(arguments, ensure_ascii=False)


def load_json(text: str) -> Any:
    """``json.loads`` that fails only with ``ValueError``, also on absurdly nested input."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def call_object(data: Any, *, keys: tuple[str, ...] = ("arguments", "parameters")) -> Call | None:
    """``{"name": …, "arguments"|"parameters": {…}}`` → a call; ``None`` if it is not one.

    Arguments written as a JSON string holding an object are unwrapped (as the OpenAI wire
    format writes them); missing arguments mean ``{}``.
    """
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments: Any = {}
    for key in keys:
        if key in data:
            arguments = data[key]
            break
    if isinstance(arguments, str):
        try:
            arguments = load_json(arguments)
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return name, dump_arguments(arguments)


def call_objects(values: Sequence[Any]) -> list[Call] | None:
    """A list of call objects (``call_object``) → calls; ``None`` if it is empty or any one
    is not a call."""
    calls = [call_object(value) for value in values]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def skip_space(text: str, at: int) -> int:
    """The first position at or after ``at`` that is not whitespace."""
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def named_call(name: str, arguments: str) -> Call | None:
    """A call from its name and its arguments as JSON text (blank: no arguments)."""
    try:
        data = load_json(arguments) if arguments.strip() else {}
    except ValueError:
        return None
    return call_object({"name": name.strip(), "arguments": data})


def calls_in_sequence(
    body: str, pattern: re.Pattern[str], one: Callable[[re.Match[str]], Call | None]
) -> list[Call] | None:
    """The calls ``pattern`` matches one after another in ``body``, each made by ``one``;
    ``None`` if anything but whitespace stands between them or one does not parse."""
    calls: list[Call] = []
    at = 0
    for match in pattern.finditer(body):
        call = one(match) if not body[at : match.start()].strip() else None
        if call is None:
            return None
        calls.append(call)
        at = match.end()
    if body[at:].strip():
        return None
    return calls or None


def value_text(value: Any) -> str:
    """A parameter's value as formats that write values as text do: strings as they are,
    anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def json_call(body: str) -> list[Call] | None:
    """A body that is one JSON call object (Hermes' form); ``None`` otherwise."""
    try:
        data = load_json(body)
    except ValueError:
        return None
    call = call_object(data)
    return [call] if call is not None else None


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
        return {"true": True, "false": False}.get(text.lower(), _NOT_CONVERTED)
    if kind == "null":
        return None if text.lower() in ("null", "none") else _NOT_CONVERTED
    try:
        parsed = load_json(text)
    except ValueError:
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


def typed_value(value: str, types: list[str]) -> Any:
    """A parameter written as text, typed by its declared schema types (first that fits); a
    value that fits none stays a string."""
    for kind in types:
        converted = _convert(value, kind)
        if converted is not _NOT_CONVERTED:
            return converted
    return value
