"""Request validation: every bad field is a 400 that names it."""

from __future__ import annotations

import json

import pytest

from cortex.errors import (
    ContextLengthExceeded,
    EngineFailure,
    InsufficientMemory,
    InvalidRequest,
    NeuronUnavailable,
    Overloaded,
)
from cortex.protocol.openai import (
    ChatCompletionRequest,
    error_body,
    error_from_body,
    parse_request,
)

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


def test_an_error_envelope_reads_back_as_the_error_it_came_from() -> None:
    sent = InsufficientMemory("does not fit", extra={"needed_bytes": 9, "free_bytes": 1})
    back = error_from_body(507, json.dumps(error_body(sent)).encode())
    assert isinstance(back, InsufficientMemory)
    assert (back.message, back.extra) == ("does not fit", {"needed_bytes": 9, "free_bytes": 1})
    # the code says more than the status: a context overflow is a 400 of its own kind
    long = ContextLengthExceeded("too long", extra={"prompt_tokens": 9, "context_length": 4})
    assert isinstance(error_from_body(400, json.dumps(error_body(long)).encode()),
                      ContextLengthExceeded)  # fmt: skip
    assert isinstance(error_from_body(429, b'{"error": {"message": "busy"}}'), Overloaded)
    assert isinstance(error_from_body(503, b"<html>bad gateway</html>"), NeuronUnavailable)
    odd = error_from_body(500, b"not json")
    assert isinstance(odd, EngineFailure)
    assert odd.message == "The neuron answered HTTP 500"
