"""Fixed conversations that the trained tiny test model reproduces exactly.

This module owns the fixture prompts and replies. The trained model (``build_model(...,
trained=True)``) is fitted until greedy decoding of every fixture's prompt yields exactly its
``reply`` followed by ``<|im_end|>``, so tests of the gateway and the neuron can assert on whole
replies, reasoning blocks and tool calls. Names are API: other code imports them.

Messages use the OpenAI chat format and tools the OpenAI ``{"type": "function", ...}`` format, so
they can be sent unchanged in a ``/v1/chat/completions`` request body.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FIXTURES",
    "SYSTEM_PROMPT",
    "TIME_TOOL",
    "WEATHER_TOOL",
    "Conversation",
    "Fixture",
]

# Prepended as a prompt variant during training so the model is not brittle to a system message.
SYSTEM_PROMPT = "You are a helpful assistant."

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "Name of the city."}},
            "required": ["city"],
        },
    },
}

# A second tool: training also sees the tool fixtures with both tools offered, so a client that
# sends more than one tool still gets the fixture replies. No fixture calls it.
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "Name of the city."}},
            "required": ["city"],
        },
    },
}


class Conversation:
    """Deep copies of a fixture's ``messages`` and ``tools`` (for fixture dataclasses)."""

    __slots__ = ()
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None

    def message_list(self) -> list[dict[str, Any]]:
        """A deep copy of ``messages`` as a list, safe to mutate or pass to other APIs."""
        copied: list[dict[str, Any]] = json.loads(json.dumps(self.messages))
        return copied

    def tool_list(self) -> list[dict[str, Any]] | None:
        """A deep copy of ``tools`` as a list (or None), safe to mutate."""
        if self.tools is None:
            return None
        copied: list[dict[str, Any]] = json.loads(json.dumps(self.tools))
        return copied


@dataclasses.dataclass(frozen=True)
class Fixture(Conversation):
    """One prompt and the exact reply the trained model gives to it under greedy decoding.

    ``reply`` is the decoded completion with ``skip_special_tokens=True``; the model ends the
    turn with ``<|im_end|>`` right after it. ``chat_template_kwargs`` are extra arguments for
    ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``). Treat the containers as
    read-only: fixtures are shared module-level constants.
    """

    name: str
    messages: tuple[dict[str, Any], ...] = dataclasses.field(hash=False)
    tools: tuple[dict[str, Any], ...] | None = dataclasses.field(hash=False)
    reply: str
    chat_template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _call(city: str) -> str:
    return (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "' + city + '"}}\n</tool_call>'
    )


_TOOLS = (WEATHER_TOOL,)

_ALL = (
    Fixture(
        name="plain",
        messages=(_user("Say hello."),),
        tools=None,
        reply="Hello from cortex! This tiny model is working.",
    ),
    Fixture(
        name="reasoning",
        messages=(_user("What is 2 + 2? Think first."),),
        tools=None,
        reply="<think>\nThe user wants 2 + 2. That is 4.\n</think>\n\nThe answer is 4.",
    ),
    Fixture(
        name="no_thinking",
        messages=(_user("What is 3 + 3? Answer directly."),),
        tools=None,
        reply="The answer is 6.",
        chat_template_kwargs={"enable_thinking": False},
    ),
    Fixture(
        name="tool_call",
        messages=(_user("What is the weather in Paris?"),),
        tools=_TOOLS,
        reply=_call("Paris"),
    ),
    Fixture(
        name="two_tool_calls",
        messages=(_user("Compare the weather in Paris and London."),),
        tools=_TOOLS,
        reply=_call("Paris") + "\n" + _call("London"),
    ),
    Fixture(
        name="malformed_tool_call",
        messages=(_user("Call the weather tool badly."),),
        tools=_TOOLS,
        # Cut off inside the arguments object, so the body is not valid JSON.
        reply='<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
    ),
    Fixture(
        name="xml_tool_call",
        messages=(_user("Weather in Paris, XML please."),),
        tools=_TOOLS,
        # Qwen3-Coder's XML tool-call syntax, for parsers that accept it.
        reply=(
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
            "</function>\n</tool_call>"
        ),
    ),
    Fixture(
        name="tool_result",
        messages=(
            _user("What is the weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": '{"temperature": 21, "sky": "clear"}',
            },
        ),
        tools=_TOOLS,
        reply="It is 21 degrees and clear in Paris.",
    ),
)

FIXTURES: dict[str, Fixture] = {fixture.name: fixture for fixture in _ALL}
