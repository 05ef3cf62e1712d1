"""Stop strings across token boundaries, and UTF-8-safe incremental decoding."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cortex.neuron.wire.detok import IncrementalDecoder
from cortex.neuron.wire.events import Text
from cortex.neuron.wire.output import StopMatcher, TextOutput


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _feed(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, str | None]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        released, stop = matcher.push(piece)
        out.append(released)
        if stop is not None:
            return "".join(out), stop
    return "".join(out) + matcher.flush(), None


@given(
    text=st.text(alphabet="abc XY\n", max_size=40),
    stop=st.text(alphabet="abcX", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12),
)
def test_stop_string_found_whatever_the_chunking(text: str, stop: str, cuts: list[int]) -> None:
    released, matched = _feed((stop,), _chunks(text, cuts))
    if stop in text:
        assert matched == stop
        assert released == text[: text.index(stop)]
    else:
        assert matched is None
        assert released == text


def test_earliest_of_several_stops_wins() -> None:
    released, matched = _feed(("END", "b"), ["aaE", "Nb", "D"])
    assert (released, matched) == ("aaEN", "b")


def test_partial_stop_prefix_is_held_then_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.push("hello ST") == ("hello ", None)
    assert matcher.push("ART") == ("START", None)


def test_decoder_joins_to_full_decode_with_multibyte_text(tiny_tokenizer: Any) -> None:
    text = "café 🙂 日本語 naïve — done"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tiny_tokenizer)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert "".join(deltas) == tiny_tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_text_output_flushes_incomplete_bytes_at_the_end(tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("ok 🙂", add_special_tokens=False)
    # Cut inside the emoji: the last bytes are pending and come out as the tokenizer decodes them.
    cut = ids[:-1]
    output = TextOutput(tiny_tokenizer)
    events = [e for i in cut for e in output.feed(i)[0]]
    events += output.finish()
    joined = "".join(e.text for e in events if isinstance(e, Text))
    assert joined == tiny_tokenizer.decode(cut)


def test_text_output_stop_string_spanning_tokens(tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("The answer is 4. Done here.", add_special_tokens=False)
    output = TextOutput(tiny_tokenizer, ("4. Do",))
    text, stop = "", None
    for token in ids:
        events, stop = output.feed(token)
        text += "".join(e.text for e in events if isinstance(e, Text))
        if stop is not None:
            break
    assert stop == "4. Do"
    assert text == "The answer is "
