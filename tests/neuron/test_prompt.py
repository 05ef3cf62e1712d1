"""Wire messages render exactly as the fixtures were trained (tool calls, tool results)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.prompt import render
from cortex.protocol.openai import ChatCompletionRequest, parse_request
from cortex.testing import FIXTURES, render_prompt


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_request_renders_like_the_fixture(tiny_tokenizer: Any, name: str) -> None:
    fixture = FIXTURES[name]
    body = {"model": "m", "messages": fixture.message_list(), "tools": fixture.tool_list()}
    request = parse_request(ChatCompletionRequest, json.dumps(body).encode())
    prompt = render(
        tiny_tokenizer, request.messages, request.tools, dict(fixture.chat_template_kwargs)
    )
    expected = render_prompt(
        tiny_tokenizer, fixture.messages, fixture.tools, fixture.chat_template_kwargs
    )
    assert prompt.text == expected
    assert prompt.ids == tiny_tokenizer.encode(expected, add_special_tokens=False)


def test_template_errors_are_invalid_requests(tiny_tokenizer: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    request = parse_request(ChatCompletionRequest, json.dumps(body).encode())
    tokenizer = type(
        "NoTemplate",
        (),
        {
            "chat_template": None,
            "encode": lambda self, text, **_: list(text.encode()),
            "decode": lambda self, ids, **_: bytes(ids).decode(errors="replace"),
        },
    )()
    with pytest.raises(InvalidRequest, match="no chat template"):
        render(tokenizer, request.messages)
