"""The fixture definitions themselves."""

from __future__ import annotations

import json
import re

from cortex.testing import FIXTURES, WEATHER_TOOL, Fixture
from cortex.testing.tokenizer import corpus_text

TOOL_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


def test_names() -> None:
    assert set(FIXTURES) >= {
        "plain",
        "reasoning",
        "tool_call",
        "two_tool_calls",
        "malformed_tool_call",
        "xml_tool_call",
        "tool_result",
    }
    assert all(name == fixture.name for name, fixture in FIXTURES.items())


def test_plain_has_no_tools_and_no_system_message() -> None:
    plain = FIXTURES["plain"]
    assert plain.tools is None
    assert plain.message_list() == [{"role": "user", "content": "Say hello."}]
    assert plain.reply == "Hello from cortex! This tiny model is working."


def test_tool_call_bodies() -> None:
    def bodies(name: str) -> list[str]:
        return TOOL_CALL.findall(FIXTURES[name].reply)

    paris = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert [json.loads(body) for body in bodies("tool_call")] == [paris]
    london = {"name": "get_weather", "arguments": {"city": "London"}}
    assert [json.loads(body) for body in bodies("two_tool_calls")] == [paris, london]
    [malformed] = bodies("malformed_tool_call")
    try:
        json.loads(malformed)
    except json.JSONDecodeError:
        pass
    else:
        raise AssertionError("malformed_tool_call must not parse as JSON")
    [xml] = bodies("xml_tool_call")
    assert xml.startswith("<function=get_weather>")


def test_tool_fixtures_offer_the_weather_tool() -> None:
    for name in ("tool_call", "two_tool_calls", "malformed_tool_call", "xml_tool_call"):
        assert FIXTURES[name].tool_list() == [WEATHER_TOOL]


def test_fixtures_are_hashable_and_copies_are_independent() -> None:
    fixture = FIXTURES["tool_result"]
    assert isinstance(hash(fixture), int)
    copy = fixture.message_list()
    copy[0]["content"] = "changed"
    assert fixture.messages[0]["content"] == "What is the weather in Paris?"
    assert isinstance(fixture, Fixture)


def test_corpus_contains_every_reply_and_some_non_ascii() -> None:
    # The tokenizer is trained on the corpus, so the replies tokenize into few tokens.
    corpus = corpus_text()
    missing = [name for name, fixture in FIXTURES.items() if fixture.reply not in corpus]
    assert not missing, f"add these replies to corpus.txt verbatim: {missing}"
    for text in ("café", "naïve", "日本語", "🙂"):
        assert text in corpus
