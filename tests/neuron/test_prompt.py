"""Wire messages render exactly as the fixtures were trained (tool calls, tool results)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.prompt import cancel_scope, render
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


# --- client templates ------------------------------------------------------------------

CLIENT = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"


def _request(template: str) -> ChatCompletionRequest:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "chat_template_kwargs": {"chat_template": template},
    }
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


def test_client_templates_are_refused_unless_allowed(tiny_tokenizer: Any) -> None:
    request = _request(CLIENT)
    with pytest.raises(InvalidRequest) as info:
        render(tiny_tokenizer, request.messages, None, request.chat_template_kwargs)
    assert info.value.param == "chat_template_kwargs.chat_template"
    assert "allow_client_chat_template" in info.value.message
    # The model's own template, sent back, is no client template.
    own = _request(tiny_tokenizer.chat_template)
    render(tiny_tokenizer, own.messages, None, own.chat_template_kwargs)


def test_an_allowed_client_template_renders_as_hugging_face_would(tiny_tokenizer: Any) -> None:
    # The model's own template, changed a little, through the bounded sandbox.
    template = tiny_tokenizer.chat_template + "{{ '' }}"
    fixture = FIXTURES[sorted(FIXTURES)[0]]
    body = {"model": "m", "messages": fixture.message_list(), "tools": fixture.tool_list()}
    request = parse_request(ChatCompletionRequest, json.dumps(body).encode())
    kwargs = {**fixture.chat_template_kwargs, "chat_template": template}
    prompt = render(tiny_tokenizer, request.messages, request.tools, kwargs, client_templates=True)
    assert prompt.text == render(tiny_tokenizer, request.messages, request.tools).text


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "2s"),
        ("{{ 'x' * 1000000000 }}", "more than"),
        ("{% set a = ['x' * 1000000] * 100 %}{{ a * 100 }}", "more than"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "more than",
        ),
        ("{{ 'x'.ljust(1000000000) }}", "past the limit"),
        ("{{ '{:>999999999}'.format(1) }}", "past the limit"),
        ("{{ '%0999999999d' % 1 }}", "past the limit"),
        ("{{ 10 ** 10000000 }}", "bits"),
        ("{% set a = 'x' * 100000 %}{{ a.replace('x', a) }}", "more than"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
        ("{{ ().__class__.__mro__ }}", "SecurityError"),
        ("{% for %}", "TemplateSyntaxError"),
    ],
)
def test_a_client_template_is_bounded(tiny_tokenizer: Any, template: str, says: str) -> None:
    request = _request(template)
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as info:
        render(
            tiny_tokenizer,
            request.messages,
            None,
            request.chat_template_kwargs,
            client_templates=True,
        )
    assert time.monotonic() - started < 4
    assert info.value.param == "chat_template_kwargs.chat_template"
    assert says in info.value.message


def test_a_client_template_stops_when_its_client_leaves(tiny_tokenizer: Any) -> None:
    request = _request(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    )
    with cancel_scope() as leaving:
        threading.Timer(0.2, leaving.set).start()
        started = time.monotonic()
        with pytest.raises(InvalidRequest) as info:
            render(
                tiny_tokenizer,
                request.messages,
                None,
                request.chat_template_kwargs,
                client_templates=True,
            )
    assert time.monotonic() - started < 1
    assert "client went away" in info.value.message
