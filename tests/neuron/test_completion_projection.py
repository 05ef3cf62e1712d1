"""Events → legacy ``text_completion`` replies and chunks: echo, logprobs, usage, indexes."""

from __future__ import annotations

import json
from typing import Any

from cortex import sse
from cortex.neuron.wire.completion_projection import (
    LOGPROB_FLOOR,
    CompletionChunkProjector,
    CompletionCollector,
    LegacyLogprobs,
    completion,
)
from cortex.neuron.wire.events import Done, Text, TokenLogprob


def _events(raw: bytes) -> list[Any]:
    decoder = sse.Decoder()
    events = list(decoder.feed(raw)) + list(decoder.close())
    return [None if e.is_done() else json.loads(e.data) for e in events]


def test_offsets_start_after_the_echo_and_follow_each_token() -> None:
    logprobs = LegacyLogprobs(offset=5)
    logprobs.add(TokenLogprob("ab", -0.5, (("ab", -0.5), ("x", -1.0))))
    logprobs.add(TokenLogprob("c", float("-inf"), (("d", -0.1),)))
    shaped = logprobs.shape()
    assert shaped.tokens == ["ab", "c"]
    assert shaped.text_offset == [5, 7]
    assert shaped.token_logprobs == [-0.5, LOGPROB_FLOOR]
    # The alternatives, and the chosen token among them where it was not.
    assert shaped.top_logprobs == [{"ab": -0.5, "x": -1.0}, {"d": -0.1, "c": LOGPROB_FLOOR}]


def test_a_whole_reply_with_echo_and_usage() -> None:
    first = CompletionCollector("Hi", LegacyLogprobs(2))
    for event in (TokenLogprob(" there", -0.1), Text(" there")):
        first.add(event)
    second = CompletionCollector("Yo")
    second.add(Text("!"))
    done = Done("stop", prompt_tokens=3, completion_tokens=2, stop_reason="x")
    reply = completion("cmpl-1", "m", 7, [(first, done), (second, done)], prompt_tokens=6)
    body = reply.model_dump()
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == ["Hi there", "Yo!"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["logprobs"]["text_offset"] == [2]
    assert body["choices"][1]["logprobs"] is None
    assert body["choices"][0]["stop_reason"] == "x"
    assert body["usage"]["prompt_tokens"] == 6
    assert body["usage"]["completion_tokens"] == 4


def test_chunks_carry_pending_logprobs_and_end_with_usage() -> None:
    projector = CompletionChunkProjector(
        "cmpl-1",
        "m",
        7,
        echoes=["P", "P"],
        prompt_tokens=[4, 4],
        total_prompt_tokens=4,
        logprobs=True,
        include_usage=True,
    )
    out = projector.start()
    out += projector.project(1, TokenLogprob("a", -0.2))
    out += projector.project(1, TokenLogprob("b", -0.3))  # text held back, then both go
    out += projector.project(1, Text("ab"))
    out += projector.project(0, TokenLogprob("<eos>", -0.1))
    out += projector.project(0, Done("stop", 4, 1))
    out += projector.project(1, Done("length", 4, 2))
    events = _events(out)
    assert events[-1] is None
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks[:2]] == [
        (0, "P"),
        (1, "P"),
    ]
    both = chunks[2]["choices"][0]
    assert both["logprobs"] == {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.2, -0.3],
        "top_logprobs": [{"a": -0.2}, {"b": -0.3}],
        "text_offset": [1, 2],
    }
    last_of_0 = chunks[3]["choices"][0]
    assert (last_of_0["finish_reason"], last_of_0["logprobs"]["tokens"]) == ("stop", ["<eos>"])
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["choices"][0]["logprobs"] is None
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_no_usage_chunk_unless_asked() -> None:
    projector = CompletionChunkProjector(
        "cmpl-1",
        "m",
        7,
        echoes=[""],
        prompt_tokens=[4],
        total_prompt_tokens=4,
        logprobs=False,
        include_usage=False,
    )
    assert projector.start() == b""
    out = projector.project(0, Text("x")) + projector.project(0, Done("stop", 4, 1))
    chunks = _events(out)
    assert chunks[-1] is None
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[0]["choices"][0]["logprobs"] is None
