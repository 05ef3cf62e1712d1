"""The one SSE codec: what is written reads back whole, however the bytes are cut."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex import sse


def decode(pieces: list[bytes], cap: int = sse.MAX_EVENT_BYTES) -> list[tuple[str, bytes]]:
    return [(e.name, e.data) for e in sse.events(pieces, cap)]


def test_encoding_is_the_compact_wire_form() -> None:
    assert sse.encode({"type": "ping"}, "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert sse.encode({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.comment("loading qwen\nnow") == b": loading qwen now\n\n"


def test_payloads_orjson_refuses_still_encode() -> None:
    assert json.loads(sse.encode({"n": 2**70})[6:]) == {"n": 2**70}


def test_events_comments_and_multiline_data() -> None:
    stream = b': keep-alive\n\nevent: progress\ndata: {"a":\ndata:1}\n\ndata: plain\n\n'
    assert decode([stream, b"event: result\ndata: {}"]) == [
        ("progress", b'{"a":\n1}'),
        ("message", b"plain"),
        ("result", b"{}"),
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_reads_the_same(newline: bytes) -> None:
    stream = b"event: x" + newline + b"data: 1" + newline + newline + b"data: 2" + newline * 2
    assert decode([stream]) == [("x", b"1"), ("message", b"2")]
    # a "\r\n" cut between two reads is one line ending, not two
    cut = len(b"event: x") + 1
    assert decode([stream[:cut], stream[cut:]]) == decode([stream])


def test_multi_line_data_is_framed_a_line_each() -> None:
    framed = sse.frame(b"one\ntwo\r\nthree", "x")
    assert framed == b"event: x\ndata: one\ndata: two\ndata: three\n\n"
    assert decode([framed]) == [("x", b"one\ntwo\nthree")]


def test_an_event_past_the_cap_is_refused() -> None:
    decoder = sse.Decoder(max_event_bytes=64)
    assert decoder.feed(b"data: " + b"x" * 40 + b"\n") == []
    with pytest.raises(sse.EventTooLarge) as info:
        decoder.feed(b"data: " + b"y" * 40 + b"\n")
    assert info.value.status == 502
    # an endless line with no newline at all is refused as well
    with pytest.raises(sse.EventTooLarge):
        sse.Decoder(max_event_bytes=64).feed(b"data: " + b"z" * 100)


payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.lists(st.tuples(st.sampled_from([None, "progress", "response.created"]), payloads)),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_whatever_is_encoded_decodes_back_in_any_cuts(
    sent: list[tuple[str | None, object]], cuts: list[int]
) -> None:
    stream = b"".join(sse.encode(payload, name) for name, payload in sent)
    at = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *at], [*at, len(stream)], strict=True)]
    got = [(e.name, json.loads(e.data)) for e in sse.events(pieces)]
    assert got == [(name or "message", payload) for name, payload in sent]
