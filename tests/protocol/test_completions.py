"""The legacy completions request: prompt shapes, choices, logprobs, suffix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex.errors import InvalidRequest
from cortex.protocol.completions import MAX_CHOICES, CompletionRequest
from cortex.protocol.openai import parse_request


def _parse(**body: Any) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", **body}).encode())


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_each_prompt_shape_splits_into_prompts(prompt: Any, prompts: Any) -> None:
    assert _parse(prompt=prompt).prompts == prompts


def test_defaults_are_openai_s() -> None:
    request = _parse(prompt="x", user="someone", logit_bias={})
    assert (request.max_tokens, request.n, request.echo, request.logprob_count) == (
        16,
        1,
        False,
        None,
    )
    assert request.fill_in is None
    assert _parse(prompt="x", suffix="").fill_in is None  # an empty suffix is none
    assert _parse(prompt="x", suffix="y").fill_in == "y"
    assert _parse(prompt="x", stop=["a", ""]).stop_strings == ("a",)
    assert _parse(prompt="x", max_tokens=None).completion_limit is None


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": []}, "prompt", "empty"),
        ({"prompt": [[1], []]}, "prompt", "empty"),
        ({"prompt": {"text": "x"}}, "prompt", "must be a string"),
        ({"prompt": [True]}, "prompt", "must be a string"),
        ({"prompt": [-1]}, "prompt", "must be a string"),
        ({"prompt": "x", "logprobs": 6}, "logprobs", "5"),
        ({"prompt": "x", "logprobs": -1}, "logprobs", "0"),
        ({"prompt": "x", "n": 3, "best_of": 2}, "best_of", "must equal n"),
        ({"prompt": ["x"] * (MAX_CHOICES + 1)}, "n", "choices"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "1"),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _parse(**body)
    assert info.value.param == param
    assert words in info.value.message


def test_best_of_equal_to_n_is_accepted() -> None:
    assert _parse(prompt="x", n=2, best_of=2).n == 2
