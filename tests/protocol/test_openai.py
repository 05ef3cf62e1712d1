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
        ({**GOOD, "max_tokens": 2**64}, "max_tokens"),
        ({**GOOD, "max_completion_tokens": 2**31}, "max_completion_tokens"),
        ({**GOOD, "min_tokens": 2**63}, "min_tokens"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "temperature": -1e-320}, "temperature"),
        ({**GOOD, "top_p": 0}, "top_p"),
        ({**GOOD, "top_k": 2**63}, "top_k"),
        ({**GOOD, "top_k": 2**31}, "top_k"),
        ({**GOOD, "top_k": -2}, "top_k"),
        ({**GOOD, "seed": 2**64}, "seed"),
        ({**GOOD, "seed": 2**63}, "seed"),
        ({**GOOD, "seed": -(2**63) - 1}, "seed"),
        ({**GOOD, "stop_token_ids": [5, -1]}, "stop_token_ids.1"),
        ({**GOOD, "stop_token_ids": [2**64]}, "stop_token_ids.0"),
        ({**GOOD, "repetition_penalty": 0}, "repetition_penalty"),
        ({**GOOD, "presence_penalty": 2.5}, "presence_penalty"),
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


def test_the_edges_of_each_sampling_range_are_accepted() -> None:
    edges = {"temperature": 1e-320, "top_p": 1.0, "top_k": 2**31 - 1, "seed": 2**63 - 1,
             "stop_token_ids": [0, 2**31 - 1], "repetition_penalty": 10.0, "min_p": 1.0,
             "presence_penalty": -2.0, "frequency_penalty": 2.0}  # fmt: skip
    request = _parse({**GOOD, **edges})
    assert (request.top_k, request.seed) == (2**31 - 1, 2**63 - 1)
    assert _parse({**GOOD, "seed": -(2**63), "top_k": -1}).seed == -(2**63)


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
