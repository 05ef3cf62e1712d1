"""What a model family is made of, and the conversations every family's tiny model answers.

A ``Family`` names its tokenizer's added tokens (special or not, as in the real tokenizer), its
bos/eos/pad roles, the token ids that end generation, the chat template that stands in for the
real one, and its ``FamilyFixture``s. A fixture is a conversation, the exact raw reply the trained
model gives to it under greedy decoding (special tokens included, in the family's own output
format), the end-of-turn token that follows the reply, and what a client must get from that reply
once it is parsed (``Expected``).

The five standard scenarios (``scenario``) share their conversations across families; only the
replies differ. Treat every container here as read-only: fixtures are shared constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from cortex.testing.fixtures import FIXTURES, WEATHER_TOOL, Conversation

__all__ = [
    "ANSWER",
    "HELLO",
    "RESULT",
    "SCENARIOS",
    "THOUGHT",
    "TOOL_THOUGHT",
    "Expected",
    "Family",
    "FamilyFixture",
    "answer_and_call",
    "scenario",
    "weather",
]

HELLO = "Hello from cortex! This tiny model is working."
THOUGHT = "The user wants 2 + 2. That is 4."
ANSWER = "The answer is 4."
RESULT = "It is 21 degrees and clear in Paris."
# The short reasoning that reasoning families write before a tool call.
TOOL_THOUGHT = "I need the weather tool."


@dataclasses.dataclass(frozen=True, slots=True)
class Expected:
    """What a client must get from a reply once the family's parser has split it.

    Compare ``reasoning`` and ``content`` after stripping surrounding whitespace: parsers differ in
    whether the newlines around ``<think>`` blocks and tool calls belong to the text. ``calls`` are
    (function name, parsed arguments) in order; their ids are the server's business.
    """

    reasoning: str = ""
    content: str = ""
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class FamilyFixture(Conversation):
    """One conversation and the exact reply a family's trained model gives to it.

    ``reply`` is the raw generated text (special tokens included) without the token that ends the
    turn, ``end``; greedy decoding of the rendered prompt yields ``reply`` then ``end``, token for
    token. ``chat_template_kwargs`` go to the chat template (e.g. ``{"thinking": True}``).
    Messages and tools are in the OpenAI wire format, ready for a ``/v1/chat/completions`` body.
    """

    name: str
    messages: tuple[dict[str, Any], ...] = dataclasses.field(hash=False)
    tools: tuple[dict[str, Any], ...] | None = dataclasses.field(hash=False)
    reply: str
    end: str
    expected: Expected = dataclasses.field(hash=False)
    chat_template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """A model family's tokenizer, chat template and fixtures.

    ``source`` is the real template this family's one mimics (a file name in the families'
    template collection, e.g. ``glm-4.6.jinja``); ``template`` is ours, a resource path inside
    ``cortex.testing``. ``special_tokens`` are added as special (``skip_special_tokens`` drops
    them), ``control_tokens`` as added but not special, each as one token, as in the real
    tokenizer.
    ``generation_eos`` are the ids that end generation (``generation_config.json``).
    ``tool_format`` and ``reasoning_format`` name the reference parsers the replies were checked
    against (vLLM's tool-call and reasoning parser names).
    """

    name: str
    source: str
    template: str
    special_tokens: tuple[str, ...]
    control_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    generation_eos: tuple[str, ...]
    fixtures: tuple[FamilyFixture, ...] = dataclasses.field(hash=False)
    tool_format: str
    reasoning_format: str | None = None
    unk: str | None = None

    @property
    def added_tokens(self) -> tuple[str, ...]:
        return (*self.special_tokens, *self.control_tokens)

    def chat_template(self) -> str:
        """The text of this family's chat template."""
        return resources.files("cortex.testing").joinpath(self.template).read_text("utf-8")

    def fixture(self, name: str) -> FamilyFixture:
        for fixture in self.fixtures:
            if fixture.name == name:
                return fixture
        raise KeyError(f"family {self.name!r} has no fixture {name!r}")


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


_TOOLS = (WEATHER_TOOL,)

# Scenario name -> (messages, tools); the same conversations for every family.
SCENARIOS: dict[str, tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...] | None]] = {
    "plain": ((_user("Say hello."),), None),
    "reasoning": ((_user("What is 2 + 2? Think first."),), None),
    "tool_call": ((_user("What is the weather in Paris?"),), _TOOLS),
    "two_tool_calls": ((_user("Compare the weather in Paris and London."),), _TOOLS),
    # user -> assistant calls get_weather (id "call_1", content None) -> tool result.
    "tool_result": (FIXTURES["tool_result"].messages, _TOOLS),
}


def weather(city: str) -> tuple[str, dict[str, Any]]:
    """The parsed get_weather call for ``city``."""
    return ("get_weather", {"city": city})


_EXPECTED = {
    "plain": Expected(content=HELLO),
    "reasoning": Expected(reasoning=THOUGHT, content=ANSWER),
    "tool_call": Expected(calls=(weather("Paris"),)),
    "two_tool_calls": Expected(calls=(weather("Paris"), weather("London"))),
    "tool_result": Expected(content=RESULT),
}


def scenario(
    name: str,
    reply: str,
    end: str,
    *,
    reasoning: str = "",
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> FamilyFixture:
    """A fixture of one of the standard ``SCENARIOS``, with this family's raw ``reply``.

    ``reasoning`` is what the reply's reasoning block holds where the scenario's expected result
    has none of its own (a thought before a tool call, a greeting's analysis channel).
    """
    messages, tools = SCENARIOS[name]
    expected = _EXPECTED[name]
    if reasoning:
        expected = dataclasses.replace(expected, reasoning=reasoning)
    return FamilyFixture(
        name=name,
        messages=messages,
        tools=tools,
        reply=reply,
        end=end,
        expected=expected,
        chat_template_kwargs=dict(chat_template_kwargs or {}),
    )


def answer_and_call(end: str, calls: Callable[..., str]) -> tuple[FamilyFixture, ...]:
    """The plain, tool_call, two_tool_calls and tool_result fixtures of a family that answers
    and calls tools without reasoning first; ``calls(*cities)`` writes its get_weather calls."""
    return (
        scenario("plain", HELLO, end),
        scenario("tool_call", calls("Paris"), end),
        scenario("two_tool_calls", calls("Paris", "London"), end),
        scenario("tool_result", RESULT, end),
    )
