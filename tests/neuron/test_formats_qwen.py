"""Tool-call bodies of the Qwen family: Hermes JSON and Qwen3-Coder's XML form, typed by the
tool's schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex.neuron.formats import Marker
from cortex.neuron.formats.base import Call, json_call, schema_types
from cortex.neuron.formats.hermes import Hermes
from cortex.neuron.formats.qwen3_coder import Qwen3Coder, parse_xml
from cortex.testing import FIXTURES, WEATHER_TOOL

PARIS = [("get_weather", '{"city": "Paris"}')]
BLOCK = (Marker(1, "<tool_call>"), Marker(2, "</tool_call>"))
SYNTAXES = {"hermes": Hermes(*BLOCK), "xml": Qwen3Coder(*BLOCK)}


def parse_body(body: str, fmt: str, tools: list[dict[str, Any]] | None) -> list[Call] | None:
    return SYNTAXES[fmt].parse(body, schema_types(tools))


TYPED_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "configure",
        "parameters": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "ratio": {"type": "number"},
                "enabled": {"type": "boolean"},
                "options": {"type": "object"},
                "tags": {"type": "array"},
                "nothing": {"type": "null"},
                "label": {"type": "string"},
                "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "either": {"type": ["boolean", "string"]},
            },
        },
    },
}


def _body(reply: str) -> str:
    """The text between the markers of a single-call fixture reply."""
    return reply.removeprefix("<tool_call>").removesuffix("</tool_call>")


def _args(calls: list[tuple[str, str]] | None) -> list[tuple[str, Any]]:
    assert calls is not None
    return [(name, json.loads(arguments)) for name, arguments in calls]


# -- Hermes JSON -------------------------------------------------------------------------------


def test_hermes_fixture_body() -> None:
    assert json_call(_body(FIXTURES["tool_call"].reply)) == PARIS


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  \n{"name": "get_weather", "arguments": {"city": "Paris"}}\n\n ',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '{"arguments": {"city": "Paris"}, "name": "get_weather"}',
    ],
)
def test_hermes_accepted_shapes(body: str) -> None:
    assert json_call(body) == PARIS


@pytest.mark.parametrize("body", ['{"name": "now"}', '{"name": "now", "arguments": null}'])
def test_hermes_missing_arguments_are_an_empty_object(body: str) -> None:
    assert json_call(body) == [("now", "{}")]


def test_hermes_keeps_non_ascii() -> None:
    calls = json_call('{"name": "get_weather", "arguments": {"city": "東京 🙂"}}')
    assert calls == [("get_weather", '{"city": "東京 🙂"}')]


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        '{"name": "get_weather", "arguments": {"city": ',  # cut off
        '[{"name": "get_weather", "arguments": {}}]',
        '"get_weather"',
        "42",
        '{"arguments": {"city": "Paris"}}',
        '{"name": 7, "arguments": {}}',
        '{"name": "", "arguments": {}}',
        '{"name": "get_weather", "arguments": ["Paris"]}',
        '{"name": "get_weather", "arguments": "[\\"Paris\\"]"}',
        '{"name": "get_weather", "arguments": "not json"}',
        '{"name": "get_weather", "arguments": ""}',
        "[" * 100_000,  # nesting deep enough to exhaust the recursion limit
    ],
)
def test_hermes_rejects_everything_else(body: str) -> None:
    assert json_call(body) is None


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(name=st.text(min_size=1, max_size=12), arguments=st.dictionaries(st.text(), _JSON_VALUES))
def test_hermes_round_trips_any_arguments(name: str, arguments: dict[str, Any]) -> None:
    body = json.dumps({"name": name, "arguments": arguments})
    assert _args(json_call(body)) == [(name, arguments)]


# -- XML ---------------------------------------------------------------------------------------


def test_xml_fixture_body_matches_hermes() -> None:
    xml = parse_xml(_body(FIXTURES["xml_tool_call"].reply))
    assert xml == json_call(_body(FIXTURES["tool_call"].reply)) == PARIS


def _xml(**values: str) -> str:
    parameters = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in values.items())
    return f"\n<function=configure>\n{parameters}</function>\n"


def test_xml_values_typed_by_schema() -> None:
    body = _xml(
        count="3",
        ratio="0.5",
        enabled="True",
        options='{"a": [1, 2]}',
        tags='["x", "y"]',
        nothing="null",
        label="42",
        maybe="7",
        either="false",
    )
    assert _args(parse_xml(body, schema_types([TYPED_TOOL]))) == [
        (
            "configure",
            {
                "count": 3,
                "ratio": 0.5,
                "enabled": True,
                "options": {"a": [1, 2]},
                "tags": ["x", "y"],
                "nothing": None,
                "label": "42",
                "maybe": 7,
                "either": False,
            },
        )
    ]


def test_xml_values_that_do_not_convert_stay_strings() -> None:
    body = _xml(count="three", ratio="true", enabled="yes", options="[1]", tags="{}", maybe="n/a")
    assert _args(parse_xml(body, schema_types([TYPED_TOOL]))) == [
        (
            "configure",
            {
                "count": "three",
                "ratio": "true",
                "enabled": "yes",
                "options": "[1]",
                "tags": "{}",
                "maybe": "n/a",
            },
        )
    ]


def test_xml_untyped_values_stay_strings() -> None:
    # Unknown tool, and unknown parameter of a known tool: no schema, no guessing.
    assert _args(parse_xml(_xml(count="3"))) == [("configure", {"count": "3"})]
    body = _xml(count="3", extra="4")
    assert _args(parse_xml(body, schema_types([TYPED_TOOL]))) == [
        ("configure", {"count": 3, "extra": "4"})
    ]


def test_xml_strips_exactly_one_newline_around_values() -> None:
    body = "<function=f><parameter=a>\n\n  x\n\n</parameter><parameter=b>y</parameter></function>"
    assert _args(parse_xml(body)) == [("f", {"a": "\n  x\n", "b": "y"})]


def test_xml_value_may_contain_closing_function_tag() -> None:
    body = "<function=write><parameter=text>\n<a></function></a>\n</parameter>\n</function>"
    assert _args(parse_xml(body)) == [("write", {"text": "<a></function></a>"})]


def test_xml_several_functions_are_several_calls() -> None:
    body = (
        "\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
        "<function=get_time>\n<parameter=city>\nLondon\n</parameter>\n</function>\n"
        "<function=ping>\n</function>\n"
    )
    assert _args(parse_xml(body)) == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "London"}),
        ("ping", {}),
    ]


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   \n",
        "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",  # no </function>
        "<function=get_weather>\n<parameter=city>\nParis\n</function>",  # no </parameter>
        "<function=get_weather>\nParis\n</function>",  # bare text in the function
        "hello <function=f></function>",  # text before
        "<function=f></function> bye",  # text after
        "<function=>\n</function>",
        "<function= >\n</function>",
        '{"name": "get_weather", "arguments": {}}',
    ],
)
def test_xml_rejects_malformed(body: str) -> None:
    assert parse_xml(body) is None


_XML_TEXT = st.text(alphabet=st.characters(blacklist_characters="<"), max_size=20)
_KEYS = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


@given(name=_KEYS, arguments=st.dictionaries(_KEYS, _XML_TEXT, max_size=4))
def test_xml_round_trips_string_values(name: str, arguments: dict[str, str]) -> None:
    parameters = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in arguments.items())
    body = f"\n<function={name}>\n{parameters}</function>\n"
    assert _args(parse_xml(body)) == [(name, arguments)]


# -- both --------------------------------------------------------------------------------------


def test_parse_body_falls_back_to_the_other_format() -> None:
    hermes = _body(FIXTURES["tool_call"].reply)
    xml = _body(FIXTURES["xml_tool_call"].reply)
    tools = [WEATHER_TOOL]
    for body in (hermes, xml):
        assert parse_body(body, "hermes", tools) == PARIS
        assert parse_body(body, "xml", tools) == PARIS
    assert parse_body(_body(FIXTURES["malformed_tool_call"].reply), "hermes", tools) is None
    assert parse_body(_body(FIXTURES["malformed_tool_call"].reply), "xml", tools) is None


def test_parse_body_types_xml_values_from_tools() -> None:
    assert _args(parse_body(_xml(count="3"), "hermes", [TYPED_TOOL])) == [
        ("configure", {"count": 3})
    ]


def test_schema_types_tolerates_odd_tool_dicts() -> None:
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": {"name": "a"}},  # no parameters
        {"type": "function", "function": {"name": "b", "parameters": {"properties": []}}},
        {"name": "c", "parameters": {"properties": {"x": {"type": "integer"}, "y": 3}}},
        {"type": "function", "function": "nonsense"},
    ]
    assert schema_types(tools) == {"c": {"x": ["integer"], "y": []}}
    assert schema_types(None) == {}
