"""Every family the neuron serves, on its tokenizer and chat template: the format found at load,
each fixture reply parsed into what a client must get, the agent conversation rendered, and a
forced call opened in the family's own form. No weights: ``tests/e2e/test_families.py`` runs
the same families through real neurons and a gateway."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from cortex.errors import InvalidRequest
from cortex.neuron.prepare import parsed_format
from cortex.neuron.prompt import ChatTemplate
from cortex.neuron.prompt.adapt import adapt
from cortex.neuron.prompt.probe import PROBE_SHOWN, PROBE_TOOLS, conversation
from cortex.neuron.wire.events import InferenceEvent, Reasoning, Text, ToolCall
from cortex.neuron.wire.harmony import HarmonyOutput
from cortex.neuron.wire.stream import FormattedOutput, start_state
from cortex.protocol.openai import ChatMessage, Tool
from cortex.testing.families import FAMILIES, FamilyFixture, build_family_tokenizer

REAL_TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "families" / "templates"

# What the neuron must find in each family: (tool format, reasoning format).
FOUND = {
    "qwen3": ("hermes", "think"),
    "qwq": ("hermes", "think"),
    "qwen3-coder": ("qwen3_coder", "none"),
    "hermes3": ("hermes", "none"),
    "glm45": ("glm", "think"),
    "gpt-oss": ("harmony", "harmony"),
    "llama3.1": ("llama_json", "none"),
    "llama3.2": ("llama_json", "none"),
    "mistral-small-3.2": ("mistral", "none"),
    "mistral-nemo": ("mistral", "none"),
    "devstral": ("mistral", "none"),
    "ministral-3-reasoning": ("mistral", "mistral"),
    "deepseek-v3.1": ("deepseek", "think"),
    "r1-distill-qwen": ("deepseek", "think"),
    "kimi-k2": ("kimi", "none"),
    "kimi-k2-0711": ("kimi", "none"),
    "gemma3": ("pythonic", "none"),
    "phi4-mini": ("json_list", "none"),
}


@cache
def tokenizer(family: str) -> PreTrainedTokenizerFast:
    return build_family_tokenizer(family)


def _messages(items: Any) -> list[ChatMessage]:
    return [ChatMessage.model_validate(dict(item)) for item in items]


def _tools(items: Any) -> list[Tool] | None:
    return [Tool.model_validate(dict(item)) for item in items] if items else None


def _cases() -> list[tuple[str, FamilyFixture]]:
    return [(name, fixture) for name, family in FAMILIES.items() for fixture in family.fixtures]


def _parse(family: str, fixture: FamilyFixture) -> list[InferenceEvent]:
    """Feed the fixture's reply through the family's output parser, as the engine would."""
    tok = tokenizer(family)
    template = ChatTemplate.of(tok)
    fmt = template.format
    prompt = template.render(
        _messages(fixture.messages), _tools(fixture.tools), dict(fixture.chat_template_kwargs)
    )
    tools = [dict(t) for t in fixture.tools] if fixture.tools else None
    if fmt.harmony is not None:
        output: Any = HarmonyOutput(tok, fmt.harmony, tools=tools)
    else:
        fmt = parsed_format(fmt, _tools(fixture.tools), None)
        output = FormattedOutput(tok, fmt, start=start_state(prompt.ids, fmt.think), tools=tools)
    events: list[InferenceEvent] = []
    for token in tok.encode(fixture.reply, add_special_tokens=False):
        new, stop = output.feed(token)
        events += new
        assert stop is None
    return events + output.finish(True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_format_is_found_from_vocabulary_and_template(family: str) -> None:
    fmt = ChatTemplate.of(tokenizer(family)).format
    assert (fmt.tool_format, fmt.reasoning_format) == FOUND[family]


@pytest.mark.parametrize(("family", "fixture"), _cases(), ids=lambda v: getattr(v, "name", v))
def test_each_reply_parses_into_what_the_client_gets(family: str, fixture: FamilyFixture) -> None:
    events = _parse(family, fixture)
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    content = "".join(e.text for e in events if isinstance(e, Text))
    calls = tuple((e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall))
    expected = fixture.expected
    assert (reasoning.strip(), content.strip(), calls) == (
        expected.reasoning,
        expected.content,
        expected.calls,
    )
    added = FAMILIES[family].added_tokens
    assert not [token for token in added if token in content], "a marker reached the content"


AGENT = [
    {"role": "system", "content": "You are a careful agent."},
    {"role": "user", "content": "Compare the weather in Paris and London."},
    {
        "role": "assistant",
        "content": "Checking both.",
        "reasoning_content": "Two cities, two calls.",
        "tool_calls": [
            {
                "id": "toolu_01ParisWeatherCall",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "toolu_02LondonWeatherCall",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "London"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_01ParisWeatherCall", "content": "Paris: 21, clear"},
    {"role": "tool", "tool_call_id": "toolu_02LondonWeatherCall", "content": "London: 14, rain"},
    {"role": "user", "content": "And which one is warmer?"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SHOWN = ("careful agent", "Compare the weather", "Paris", "London", "21, clear", "14, rain")


def _render_agent(tok: Any) -> str:
    prompt = ChatTemplate.of(tok).render(_messages(AGENT), _tools([WEATHER]))
    assert prompt.ids
    return prompt.text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_five_turn_agent_conversation_renders(family: str) -> None:
    text = _render_agent(tokenizer(family))
    for part in (*SHOWN, "which one is warmer", "get_weather"):
        assert part in text, part


def _real(family: str) -> str:
    source = FAMILIES[family].source
    path = REAL_TEMPLATES / source
    if not path.is_file():
        pytest.skip(f"the families' real templates are not here ({REAL_TEMPLATES})")
    return path.read_text()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_real_template_renders_the_agent_conversation(family: str) -> None:
    """With the publisher's own template on the family's tokenizer, as a user would load it."""
    tok = build_family_tokenizer(family)
    tok.chat_template = _real(family)
    text = _render_agent(tok)
    for part in (*SHOWN, "which one is warmer", "get_weather"):
        assert part in text, part
    # Each call's arguments and each result appear once per call: nothing doubled or dropped.
    assert text.count("21, clear") == 1
    assert text.count("14, rain") == 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_probe_conversation_renders_in_full_with_the_real_template(family: str) -> None:
    tok = build_family_tokenizer(family)
    tok.chat_template = _real(family)
    template = ChatTemplate.of(tok)
    messages, tools = adapt(conversation(), PROBE_TOOLS, template.profile, template.format.tools)
    text = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert [part for part in PROBE_SHOWN if part not in text] == []


def test_a_template_that_still_fails_is_a_400_naming_its_error() -> None:
    tok = build_family_tokenizer("qwen3")
    tok.chat_template = "{{ raise_exception('this template wants a unicorn') }}"
    with pytest.raises(InvalidRequest, match="unicorn"):
        ChatTemplate.of(tok).render(_messages([{"role": "user", "content": "hi"}]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_forced_call_opens_in_the_family_form(family: str) -> None:
    """The opening ``tool_choice`` appends is how the family's own call begins: it is a prefix
    of the trained call (markers and name), so the model carries on inside it."""
    fmt = ChatTemplate.of(tokenizer(family)).format
    reply = FAMILIES[family].fixture("tool_call").reply
    if fmt.harmony is not None:
        opening = fmt.harmony.opening("get_weather")
    else:
        syntax = fmt.tools
        assert syntax is not None
        opening = syntax.opening("get_weather")
        if syntax.start is not None and not syntax.by_text:
            opening = syntax.start.text + opening
    squeeze = "".join(opening.split())
    assert squeeze in "".join(reply.split()), (opening, reply)
