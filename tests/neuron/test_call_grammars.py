"""Each family's tool-call grammar (``ToolSyntax.call_grammar``), compiled by llguidance for the
family's own tokenizer: it takes exactly the calls the format writes (``write``) for arguments
that match the tools' schemas, and what it takes parses back into those calls; it refuses an
undeclared tool, arguments that break the schema, and a second call unless calls are parallel.
No weights: the tiny families' tokenizers only."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import llguidance
import llguidance.hf
import pytest
from transformers import PreTrainedTokenizerFast

from cortex.neuron.formats import Format
from cortex.neuron.formats.deepseek import CALLS_BEGIN, CALLS_END, DeepSeek
from cortex.neuron.formats.grammar import NO_ARGUMENTS, GrammarTool
from cortex.neuron.prompt import ChatTemplate
from cortex.neuron.structured.rules import Rules, grammar
from cortex.neuron.wire.events import InferenceEvent, Text, ToolCall
from cortex.neuron.wire.stream import FormattedOutput
from cortex.testing.families import FAMILIES, build_family_tokenizer

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
SEARCH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["query"],
    "additionalProperties": False,
}
TOOLS = (
    GrammarTool("get_weather", WEATHER),
    GrammarTool("search", SEARCH),
    GrammarTool("now", NO_ARGUMENTS),
)

Calls = list[tuple[str, dict[str, Any]]]

# Arguments in the schema's order, as a model constrained by the grammar writes them.
VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "get_weather",
        {
            "city": "Paris",
            "unit": "celsius",
            "days": 3,
            "where": {"lat": 48.85, "lon": 2.35},
            "tags": ["a", "b c"],
            "detailed": True,
        },
    ),
    ("get_weather", {"city": "Oslo", "days": -1}),
    ("search", {"query": 'two\nlines, <b>bold</b> and "quotes"', "limit": None}),
    ("search", {"query": "x", "limit": 10}),
    ("now", {}),
]
INVALID: dict[str, tuple[str, dict[str, Any]]] = {
    "undeclared tool": ("get_time", {"city": "Paris", "days": 1}),
    "wrong type": ("get_weather", {"city": "Paris", "days": "three"}),
    "not in the enum": ("get_weather", {"city": "Paris", "unit": "kelvin", "days": 1}),
    "missing required": ("get_weather", {"city": "Paris"}),
    "extra property": ("get_weather", {"city": "Paris", "days": 1, "color": "red"}),
    "nested wrong type": ("get_weather", {"city": "Paris", "days": 1, "where": {"lat": "n"}}),
    "nested missing": ("get_weather", {"city": "Paris", "days": 1, "where": {"lat": 1}}),
    "arguments for none": ("now", {"x": 1}),
}


@cache
def _family(name: str) -> tuple[PreTrainedTokenizerFast, llguidance.LLTokenizer, Format]:
    tokenizer = build_family_tokenizer(name)
    compiled = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
    return tokenizer, compiled, ChatTemplate.of(tokenizer).format


def _with_grammar() -> list[str]:
    names = []
    for name in sorted(FAMILIES):
        syntax = _family(name)[2].tools
        if syntax is not None and syntax.call_grammar([], True) is not None:
            names.append(name)
    return names


GRAMMAR_FAMILIES = _with_grammar()


def _matcher(family: str, lark: str) -> llguidance.LLMatcher:
    _, compiled, _ = _family(family)
    matcher = llguidance.LLMatcher(
        compiled, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0
    )
    assert not matcher.get_error(), matcher.get_error()
    return matcher


@cache
def _calls_matcher(family: str, parallel: bool) -> llguidance.LLMatcher:
    syntax = _family(family)[2].tools
    assert syntax is not None
    rules = syntax.call_grammar(TOOLS, parallel)
    assert rules is not None
    return _matcher(family, "start: calls\n" + rules)


def _ids(family: str, text: str) -> list[int]:
    ids: list[int] = _family(family)[0].encode(text, add_special_tokens=False)
    return ids


def _takes(matcher: llguidance.LLMatcher, ids: Sequence[int]) -> bool:
    matcher = matcher.deep_copy()
    return bool(matcher.consume_tokens(list(ids))) and matcher.is_accepting()


def _write(family: str, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    syntax = _family(family)[2].tools
    assert syntax is not None
    return syntax.write(calls)


def _accepts(family: str, calls: Calls, parallel: bool = True) -> bool:
    return _takes(_calls_matcher(family, parallel), _ids(family, _write(family, calls)))


def _wire(tools: Sequence[GrammarTool]) -> list[dict[str, Any]]:
    """``tools`` in the OpenAI wire form, for the output parser's typing of text values."""
    return [
        {"type": "function", "function": {"name": tool.name, "parameters": dict(tool.schema)}}
        for tool in tools
    ]


def _parsed(
    family: str, ids: Sequence[int], tools: Sequence[GrammarTool] = TOOLS
) -> tuple[str, Calls]:
    tokenizer, _, fmt = _family(family)
    output = FormattedOutput(tokenizer, fmt, start="text", tools=_wire(tools))
    events: list[InferenceEvent] = []
    for token in ids:
        new, stop = output.feed(token)
        events += new
        assert stop is None
    events += output.finish(True)
    text = "".join(e.text for e in events if isinstance(e, Text))
    calls = [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall)]
    return text, calls


def test_the_families_with_call_grammars() -> None:
    expected = sorted(name for name in FAMILIES if name != "gpt-oss")
    assert expected == GRAMMAR_FAMILIES, "harmony aside, every family's calls can be constrained"


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
@pytest.mark.parametrize("parallel", [True, False])
def test_the_grammar_compiles(family: str, parallel: bool) -> None:
    _calls_matcher(family, parallel)


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
@pytest.mark.parametrize("call", VALID, ids=lambda c: json.dumps(c[1])[:40])
def test_a_written_call_is_taken_and_parses_back(
    family: str, call: tuple[str, dict[str, Any]]
) -> None:
    assert _accepts(family, [call], parallel=False)
    ids = _ids(family, _write(family, [call]))
    assert _parsed(family, ids) == ("", [call])


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_call_outside_the_tools_is_refused(family: str, case: str) -> None:
    assert not _accepts(family, [INVALID[case]])


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
def test_a_second_call_needs_parallel_calls(family: str) -> None:
    two = [VALID[1], VALID[3]]
    assert _accepts(family, two, parallel=True)
    assert not _accepts(family, two, parallel=False)
    assert _parsed(family, _ids(family, _write(family, two))) == ("", two)


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
def test_no_tools_still_gives_rules(family: str) -> None:
    """``rules`` asks with no tools whether a format has a grammar at all."""
    syntax = _family(family)[2].tools
    assert syntax is not None
    assert isinstance(syntax.call_grammar([], False), str)


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
@pytest.mark.parametrize("mode", ["required", "auto"])
def test_the_whole_reply_grammar_compiles_and_takes_a_call(family: str, mode: Any) -> None:
    fmt = _family(family)[2]
    lark = grammar(Rules(calls=mode, tools=TOOLS), fmt, "text")
    matcher = _matcher(family, lark)
    assert _takes(matcher, _ids(family, _write(family, [VALID[0]])))


# -- text values (Qwen3-Coder's XML, GLM's tags) ---------------------------------------------

XML = [f for f in GRAMMAR_FAMILIES if _family(f)[2].tool_format in ("qwen3_coder", "glm")]
TEXT_TOOL = GrammarTool(
    "note",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 2, "maxLength": 5},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            # null first: "null" reads back as None (string first, as the string "null").
            "mood": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["ok", "bad"]}]},
            "body": {},
        },
        "required": ["title"],
    },
)


@pytest.mark.parametrize("family", XML)
@pytest.mark.parametrize(
    ("arguments", "taken"),
    [
        ({"title": "ab"}, True),
        ({"title": "a"}, False),
        ({"title": "abcdef"}, False),
        ({"title": "ab", "code": "XYZ"}, True),
        ({"title": "ab", "code": "XYZW"}, False),
        ({"title": "ab", "mood": "ok"}, True),
        ({"title": "ab", "mood": None}, True),
        ({"title": "ab", "mood": "meh"}, False),
        ({"title": "ab", "body": "any\n\ntext {}"}, True),
        ({"title": "ab", "body": "</parameter>"}, None),
        ({"title": "ab", "body": "</arg_value>"}, None),
    ],
)
def test_text_values_follow_the_string_schema(
    family: str, arguments: dict[str, Any], taken: bool | None
) -> None:
    syntax = _family(family)[2].tools
    assert syntax is not None
    rules = syntax.call_grammar([TEXT_TOOL], False)
    assert rules is not None
    matcher = _matcher(family, "start: calls\n" + rules)
    ids = _ids(family, syntax.write([("note", arguments)]))
    if taken is None:  # the closing tag inside a value: refused where it would end the value
        closing = "</parameter>" if syntax.name == "qwen3_coder" else "</arg_value>"
        taken = closing not in arguments["body"]
    assert _takes(matcher, ids) is taken
    if taken:
        assert _parsed(family, ids, [TEXT_TOOL])[1] == [("note", arguments)]


# -- shapes no family above writes -------------------------------------------------------------


def test_deepseek_v3_fenced_calls_with_marker_tokens() -> None:
    """V3 and R1 proper write the fenced shape with their markers as tokens."""
    fmt = _family("deepseek-v3.1")[2]
    assert isinstance(fmt.tools, DeepSeek)
    syntax = dataclasses.replace(fmt.tools, fenced=True)
    for parallel in (True, False):
        rules = syntax.call_grammar(TOOLS, parallel)
        assert rules is not None
        matcher = _matcher("deepseek-v3.1", "start: calls\n" + rules)
        for call in VALID:
            text = syntax.write([call])
            assert "```json" in text
            assert _takes(matcher, _ids("deepseek-v3.1", text))
            assert syntax.parse(text.removeprefix(CALLS_BEGIN).removesuffix(CALLS_END), {}) == [
                (call[0], json.dumps(call[1]))
            ]
        two = _ids("deepseek-v3.1", syntax.write([VALID[0], VALID[1]]))
        assert _takes(matcher, two) is parallel
        for case in INVALID.values():
            assert not _takes(matcher, _ids("deepseek-v3.1", syntax.write([case])))


def test_llama_calls_may_follow_the_python_tag() -> None:
    matcher = _calls_matcher("llama3.1", True)
    text = "<|python_tag|>" + _write("llama3.1", [VALID[0], VALID[4]])
    assert _takes(matcher, _ids("llama3.1", text))
    assert not _takes(matcher, _ids("llama3.1", "<|python_tag|><|python_tag|>" + text[14:]))


# -- pythonic: Python literals, not JSON -------------------------------------------------------

PLAN = GrammarTool(
    "plan",
    {
        "type": "object",
        "$defs": {
            "Step": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "done": {"type": "boolean"}},
                "required": ["name", "done"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 1},
            "flags": {
                "type": "object",
                "properties": {
                    "fast": {"type": "boolean"},
                    "level": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
            "extra": {},
            "mode": {"enum": ["a", None, 1]},
            "note": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
        },
        "required": ["steps"],
    },
)
STEP = {"name": "x", "done": True}


@pytest.mark.parametrize(
    ("arguments", "taken"),
    [
        ({"steps": [STEP]}, True),
        (
            {
                "steps": [STEP, {"name": "y", "done": False}],
                "flags": {"fast": False, "level": 2},
                "extra": {"k": [1, None, "s", 2.5, {"t": True}]},
                "mode": None,
                "note": "abc",
            },
            True,
        ),
        ({"steps": [STEP], "mode": 1, "note": None}, True),
        ({"steps": []}, False),
        ({"steps": [{"name": "x"}]}, False),
        ({"steps": [{"name": "x", "done": 1}]}, False),
        ({"steps": [STEP], "flags": {"level": -1}}, False),
        ({"steps": [STEP], "flags": {"slow": True}}, False),
        ({"steps": [STEP], "note": "abcd"}, False),
        ({"steps": [STEP], "mode": "b"}, False),
    ],
)
def test_pythonic_values_are_literals_held_to_the_schema(
    arguments: dict[str, Any], taken: bool
) -> None:
    syntax = _family("gemma3")[2].tools
    assert syntax is not None
    rules = syntax.call_grammar([PLAN], False)
    assert rules is not None
    matcher = _matcher("gemma3", "start: calls\n" + rules)
    ids = _ids("gemma3", syntax.write([("plan", arguments)]))
    assert _takes(matcher, ids) is taken
    if taken:
        assert _parsed("gemma3", ids, [PLAN]) == ("", [("plan", arguments)])


@pytest.mark.parametrize(
    "text",
    [
        '[plan(steps=[{"name": "x", "done": true}])]',  # JSON's words
        '[plan(steps=[{"name": "x", "done": True}], mode=null)]',
        "[plan(steps=[{'name': 'x', 'done': True}])]",  # quotes as write does not
        '[plan(steps=[{"name": "x", "done": True}])',
    ],
)
def test_pythonic_refuses_what_python_or_write_would_not_write(text: str) -> None:
    syntax = _family("gemma3")[2].tools
    assert syntax is not None
    rules = syntax.call_grammar([PLAN], True)
    assert rules is not None
    assert not _takes(_matcher("gemma3", "start: calls\n" + rules), _ids("gemma3", text))


@pytest.mark.parametrize("family", GRAMMAR_FAMILIES)
def test_a_schema_with_definitions(family: str) -> None:
    """References to the tool's ``$defs`` resolve wherever a format embeds part of a schema."""
    syntax = _family(family)[2].tools
    assert syntax is not None
    rules = syntax.call_grammar([PLAN], False)
    assert rules is not None
    matcher = _matcher(family, "start: calls\n" + rules)
    call = ("plan", {"steps": [STEP, {"name": "y", "done": False}], "note": "abc"})
    ids = _ids(family, syntax.write([call]))
    assert _takes(matcher, ids)
    assert _parsed(family, ids, [PLAN]) == ("", [call])
    assert not _takes(matcher, _ids(family, syntax.write([("plan", {"steps": [{"name": 1}]})])))
