"""The ChatML families: Qwen3 (the original tiny model), QwQ, Qwen3-Coder and Hermes 3.

Replies follow vLLM's parsers: ``hermes`` (``<tool_call>`` JSON; several calls one per line),
``qwen3_coder`` (``<function=NAME><parameter=KEY>`` XML), and the ``qwen3`` / ``deepseek_r1``
reasoning parsers (``<think>...</think>``; QwQ's prompt already opens ``<think>``, so its replies
start inside the reasoning and only close it).
"""

from __future__ import annotations

import dataclasses

from cortex.testing.families.spec import (
    ANSWER,
    HELLO,
    RESULT,
    THOUGHT,
    TOOL_THOUGHT,
    Expected,
    Family,
    FamilyFixture,
    answer_and_call,
    scenario,
    weather,
)
from cortex.testing.fixtures import FIXTURES
from cortex.testing.tokenizer import CONTROL_TOKENS, ENDOFTEXT, IM_END, IM_START, SPECIAL_TOKENS

__all__ = ["HERMES3", "QWEN3", "QWEN3_CODER", "QWQ"]


def _hermes_call(city: str) -> str:
    return (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "' + city + '"}}\n</tool_call>'
    )


def _hermes_calls(*cities: str) -> str:
    return "\n".join(_hermes_call(city) for city in cities)


# The original tiny model keeps its own fixtures (cortex.testing.FIXTURES); these are the ones
# whose parsed result is unambiguous. The model also reproduces "malformed_tool_call" and
# "xml_tool_call", which exist to exercise parsers' edge cases.
_QWEN3_EXPECTED = {
    "plain": Expected(content=HELLO),
    "reasoning": Expected(reasoning=THOUGHT, content=ANSWER),
    "no_thinking": Expected(content="The answer is 6."),
    "tool_call": Expected(calls=(weather("Paris"),)),
    "two_tool_calls": Expected(calls=(weather("Paris"), weather("London"))),
    "tool_result": Expected(content=RESULT),
}

QWEN3 = Family(
    name="qwen3",
    source="qwen3.jinja",
    template="chat_template.jinja",
    special_tokens=SPECIAL_TOKENS,
    control_tokens=CONTROL_TOKENS,
    bos=None,
    eos=IM_END,
    pad=ENDOFTEXT,
    generation_eos=(IM_END, ENDOFTEXT),
    fixtures=tuple(
        FamilyFixture(
            name=name,
            messages=FIXTURES[name].messages,
            tools=FIXTURES[name].tools,
            reply=FIXTURES[name].reply,
            end=IM_END,
            expected=expected,
            chat_template_kwargs=FIXTURES[name].chat_template_kwargs,
        )
        for name, expected in _QWEN3_EXPECTED.items()
    ),
    tool_format="hermes",
    reasoning_format="qwen3",
)

# QwQ-32B: the Qwen2.5 tokenizer with <think>/</think> and <tool_response> added, all non-special:
# the same added tokens as Qwen3's.
QWQ = dataclasses.replace(
    QWEN3,
    name="qwq",
    source="qwq.jinja",
    template="families/qwq.jinja",
    fixtures=(
        # The prompt ends with "<think>\n": an empty reasoning block is "\n</think>\n\n".
        scenario("plain", f"\n</think>\n\n{HELLO}", IM_END),
        scenario("reasoning", f"{THOUGHT}\n</think>\n\n{ANSWER}", IM_END),
        scenario(
            "tool_call",
            f"{TOOL_THOUGHT}\n</think>\n\n{_hermes_calls('Paris')}",
            IM_END,
            reasoning=TOOL_THOUGHT,
        ),
        scenario(
            "two_tool_calls",
            f"{TOOL_THOUGHT}\n</think>\n\n{_hermes_calls('Paris', 'London')}",
            IM_END,
            reasoning=TOOL_THOUGHT,
        ),
        scenario("tool_result", f"\n</think>\n\n{RESULT}", IM_END),
    ),
    reasoning_format="deepseek_r1",
)


def _coder_calls(*cities: str) -> str:
    return "\n".join(
        f"<tool_call>\n<function=get_weather>\n<parameter=city>\n{city}\n</parameter>\n"
        "</function>\n</tool_call>"
        for city in cities
    )


QWEN3_CODER = dataclasses.replace(
    QWEN3,
    name="qwen3-coder",
    source="qwen3-coder.jinja",
    template="families/qwen3-coder.jinja",
    fixtures=answer_and_call(IM_END, _coder_calls),
    tool_format="qwen3_coder",
    reasoning_format=None,
)

# Hermes 3 (Llama 3.1 base): ChatML tokens in the Llama vocabulary. The Hermes tool tags are
# single tokens there, marked special (vLLM's hermes parser turns skip_special_tokens off for
# that reason), so a server must decode tool calls with special tokens kept.
_HERMES_START = "<|begin_of_text|>"
_HERMES_END = "<|end_of_text|>"

HERMES3 = Family(
    name="hermes3",
    source="hermes3.jinja",
    template="families/hermes3.jinja",
    special_tokens=(
        _HERMES_START,
        _HERMES_END,
        IM_START,
        IM_END,
        "<tools>",
        "</tools>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    ),
    control_tokens=(),
    bos=_HERMES_START,
    eos=IM_END,
    pad=_HERMES_END,
    generation_eos=(IM_END, _HERMES_END),
    fixtures=answer_and_call(IM_END, _hermes_calls),
    tool_format="hermes",
)
