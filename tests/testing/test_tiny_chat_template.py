"""The ChatML chat template: tools, tool calls, tool responses, reasoning, generation prompt."""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedTokenizerFast

from cortex.testing import TIME_TOOL, WEATHER_TOOL
from cortex.testing.train import render_prompt


def _render(
    tokenizer: PreTrainedTokenizerFast,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    return render_prompt(tokenizer, messages, tools, kwargs)


def test_plain_conversation(tokenizer: PreTrainedTokenizerFast) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert _render(tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_apply_chat_template_directly(tokenizer: PreTrainedTokenizerFast) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    encoded: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    # transformers 5 returns a BatchEncoding (return_dict=True) by default.
    assert encoded["input_ids"] == tokenizer.encode(text, add_special_tokens=False)


def test_content_parts_are_concatenated(tokenizer: PreTrainedTokenizerFast) -> None:
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello."}]
    assert _render(tokenizer, [{"role": "user", "content": parts}]) == _render(
        tokenizer, [{"role": "user", "content": "Say hello."}]
    )


def test_enable_thinking_false_closes_an_empty_think_block(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert _render(tokenizer, messages, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert _render(tokenizer, messages, enable_thinking=True).endswith("<|im_start|>assistant\n")


def test_tools_go_into_the_system_message(tokenizer: PreTrainedTokenizerFast) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = _render(tokenizer, messages, [WEATHER_TOOL, TIME_TOOL])
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert (
        "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n" + json.dumps(TIME_TOOL) + "\n</tools>"
    ) in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' in text
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tool_calls_and_grouped_tool_responses(tokenizer: PreTrainedTokenizerFast) -> None:
    def call(city: str, arguments: Any) -> dict[str, Any]:
        return {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }

    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            # Arguments may be a JSON string (OpenAI) or an object.
            "tool_calls": [call("Paris", '{"city": "Paris"}'), call("Oslo", {"city": "Oslo"})],
        },
        {"role": "tool", "tool_call_id": "call_Paris", "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_Oslo",
            "content": [{"type": "text", "text": "snow"}],
        },
    ]
    text = _render(tokenizer, messages, [WEATHER_TOOL])
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nsnow\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tool_call_without_content(tokenizer: PreTrainedTokenizerFast) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {}}}
            ],
        },
        # Not the last message: Qwen3 gives the final assistant turn an empty think block.
        {"role": "tool", "content": "rain"},
    ]
    text = _render(tokenizer, messages, [WEATHER_TOOL])
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {}}\n'
        "</tool_call><|im_end|>\n"
    ) in text


def test_reasoning_kept_only_after_the_last_user_query(tokenizer: PreTrainedTokenizerFast) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Q2"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "new thoughts",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {}}}
            ],
        },
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "<think>\nlast thoughts\n</think>\n\nA2"},
    ]
    text = _render(tokenizer, messages, [WEATHER_TOOL])
    assert "old thoughts" not in text
    assert "<|im_start|>assistant\nA1<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\n<tool_call>" in text
    assert "<|im_start|>assistant\n<think>\nlast thoughts\n</think>\n\nA2<|im_end|>" in text


def test_reasoning_in_content_of_an_earlier_turn_is_dropped(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
    ]
    assert "<|im_start|>assistant\nA1<|im_end|>\n" in _render(tokenizer, messages)
