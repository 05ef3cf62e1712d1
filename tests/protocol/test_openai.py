"""Request validation: every bad field is a 400 that names it."""

from __future__ import annotations

import json

import pytest

from cortex.errors import InvalidRequest
from cortex.protocol.openai import ChatCompletionRequest, parse_request

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _parse(body: object) -> ChatCompletionRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(ChatCompletionRequest, raw)


def test_good_request_with_unknown_fields_is_accepted() -> None:
    request = _parse({**GOOD, "user": "someone", "logit_bias": {}, "stop": "x"})
    assert request.stop_strings == ("x",)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ([1, 2], None),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "max_tokens": -1}, "max_tokens"),
        ({**GOOD, "max_tokens": "5"}, "max_tokens"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "stream": "yes"}, "stream"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": GOOD["messages"]}, "model"),
    ],
)
def test_bad_requests_are_invalid_request_naming_the_field(body: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        _parse(body)
    assert info.value.status == 400
    assert info.value.param == param
    if param:
        assert param in info.value.message
