"""Token ids → Text / Reasoning / ToolCall events through a format, on the tiny tokenizer's
fixture replies (the Qwen3 shape: ``<think>`` and Hermes ``<tool_call>``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cortex.neuron.formats import Format, Marker, ThinkSyntax, detect, single_token
from cortex.neuron.formats.hermes import Hermes
from cortex.neuron.formats.qwen3_coder import Qwen3Coder
from cortex.neuron.wire.events import InferenceEvent, Reasoning, Text, ToolCall
from cortex.neuron.wire.stream import FormattedOutput, State, start_state
from cortex.testing import FIXTURES, WEATHER_TOOL

THINK, THINK_END, TOOL, TOOL_END = 1018, 1019, 1020, 1021
THINK_SYNTAX = ThinkSyntax("think", Marker(THINK, "<think>"), Marker(THINK_END, "</think>"))
TOOL_MARKERS = (Marker(TOOL, "<tool_call>"), Marker(TOOL_END, "</tool_call>"))
MARKERS = Format(think=THINK_SYNTAX, tools=Hermes(*TOOL_MARKERS))
XML = Format(think=THINK_SYNTAX, tools=Qwen3Coder(*TOOL_MARKERS))
MARKER_IDS = {THINK, THINK_END, TOOL, TOOL_END}
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
PREFIX = '\n{"name": "get_weather", "arguments": '

Run = tuple[list[InferenceEvent], str | None, FormattedOutput]


def _enc(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def _run(tokenizer: Any, ids: Sequence[int], **options: Any) -> Run:
    """Feed ids one at a time, as the engine does; stop where a stop string says so."""
    fmt = options.pop("fmt", MARKERS)
    output = FormattedOutput(tokenizer, fmt, tools=[WEATHER_TOOL], **options)
    events: list[InferenceEvent] = []
    for token in ids:
        new, stop = output.feed(token)
        events += new
        if stop is not None:
            return events, stop, output
    return events + output.finish(), None, output


def _run_batches(tokenizer: Any, ids: Sequence[int], sizes: list[int], **options: Any) -> Run:
    """Feed ids in batches of the given sizes through a loop, collecting events per batch."""
    fmt = options.pop("fmt", MARKERS)
    output = FormattedOutput(tokenizer, fmt, tools=[WEATHER_TOOL], **options)
    events: list[InferenceEvent] = []
    at = 0
    for size in [*sizes, len(ids)]:
        batch = ids[at : at + size]
        at += len(batch)
        results = [output.feed(token) for token in batch]
        events += [event for new, _ in results for event in new]
        stops = [stop for _, stop in results if stop is not None]
        if stops:
            return events, stops[0], output
    return events + output.finish(), None, output


def _runs(events: list[InferenceEvent]) -> list[tuple[str, str]]:
    """Merge adjacent deltas of one kind; a tool call is its own run (name, arguments)."""
    merged: list[tuple[str, str]] = []
    for event in events:
        if isinstance(event, ToolCall):
            merged.append((f"call {event.index} {event.name}", event.arguments))
            continue
        kind = "text" if isinstance(event, Text) else "reasoning"
        assert isinstance(event, Text | Reasoning)
        assert event.text, "no empty deltas"
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + event.text)
        else:
            merged.append((kind, event.text))
    return merged


def _fixture(tokenizer: Any, name: str, **options: Any) -> list[tuple[str, str]]:
    events, stop, _ = _run(tokenizer, _enc(tokenizer, FIXTURES[name].reply), **options)
    assert stop is None
    return _runs(events)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", "no_thinking", "tool_result"])
def test_plain_fixtures_are_text(tiny_tokenizer: Any, name: str) -> None:
    assert _fixture(tiny_tokenizer, name) == [("text", FIXTURES[name].reply)]


def test_reasoning_is_separated_from_text(tiny_tokenizer: Any) -> None:
    ids = _enc(tiny_tokenizer, FIXTURES["reasoning"].reply)
    events, _, output = _run(tiny_tokenizer, ids)
    assert _runs(events) == [
        ("reasoning", "The user wants 2 + 2. That is 4."),
        ("text", "The answer is 4."),
    ]
    # The whole block, <think> through </think>, is reasoning.
    assert output.reasoning_tokens == ids.index(THINK_END) + 1


def test_one_tool_call(tiny_tokenizer: Any) -> None:
    events, _, output = _run(tiny_tokenizer, _enc(tiny_tokenizer, FIXTURES["tool_call"].reply))
    assert len(events) == 1
    call = events[0]
    assert isinstance(call, ToolCall)
    assert (call.index, call.name, json.loads(call.arguments)) == (
        0,
        "get_weather",
        {"city": "Paris"},
    )
    assert CALL_ID.fullmatch(call.id)
    assert output.reasoning_tokens == 0


def test_two_tool_calls_and_no_text_between(tiny_tokenizer: Any) -> None:
    events, _, _ = _run(tiny_tokenizer, _enc(tiny_tokenizer, FIXTURES["two_tool_calls"].reply))
    assert all(isinstance(e, ToolCall) for e in events)
    assert _runs(events) == [
        ("call 0 get_weather", '{"city": "Paris"}'),
        ("call 1 get_weather", '{"city": "London"}'),
    ]
    assert len({e.id for e in events if isinstance(e, ToolCall)}) == 2


def test_malformed_call_comes_back_verbatim(tiny_tokenizer: Any) -> None:
    reply = FIXTURES["malformed_tool_call"].reply
    assert _fixture(tiny_tokenizer, "malformed_tool_call") == [("text", reply)]


@pytest.mark.parametrize("fmt", [MARKERS, XML])
def test_xml_call_parses_like_hermes(tiny_tokenizer: Any, fmt: Any) -> None:
    assert _fixture(tiny_tokenizer, "xml_tool_call", fmt=fmt) == _fixture(
        tiny_tokenizer, "tool_call", fmt=fmt
    )


# -- start states ------------------------------------------------------------------------------


def _prompt(tokenizer: Any, name: str, **kwargs: Any) -> list[int]:
    fixture = FIXTURES[name]
    text = tokenizer.apply_chat_template(
        fixture.message_list(),
        tools=fixture.tool_list(),
        add_generation_prompt=True,
        tokenize=False,
        **{**fixture.chat_template_kwargs, **kwargs},
    )
    return _enc(tokenizer, text)


def test_start_state_from_the_prompt(tiny_tokenizer: Any) -> None:
    plain = _prompt(tiny_tokenizer, "reasoning")
    closed = _prompt(tiny_tokenizer, "no_thinking")
    assert THINK_END in closed  # the template closed an empty think block
    assert start_state(plain, THINK_SYNTAX) == "text"
    assert start_state(closed, THINK_SYNTAX) == "text"
    assert start_state([*plain, *_enc(tiny_tokenizer, "<think>\n")], THINK_SYNTAX) == "reasoning"
    assert start_state([*closed, THINK], THINK_SYNTAX) == "reasoning"
    assert start_state([], THINK_SYNTAX) == "text"
    assert start_state([THINK], None) == "text"


def test_output_inside_an_opened_think_block(tiny_tokenizer: Any) -> None:
    reply = FIXTURES["reasoning"].reply.removeprefix("<think>")
    prompt = [*_prompt(tiny_tokenizer, "reasoning"), THINK]
    ids = _enc(tiny_tokenizer, reply)
    events, _, output = _run(tiny_tokenizer, ids, start=start_state(prompt, THINK_SYNTAX))
    assert _runs(events) == [
        ("reasoning", "The user wants 2 + 2. That is 4."),
        ("text", "The answer is 4."),
    ]
    assert output.reasoning_tokens == ids.index(THINK_END) + 1


def test_a_spent_thinking_budget_forces_the_end_of_thinking(tiny_tokenizer: Any) -> None:
    """Feeding what ``forced_next`` asks for, as the engine does: reasoning stops at the
    budget (markers not counted) and the block closes; text then flows as usual."""
    ids = _enc(tiny_tokenizer, FIXTURES["reasoning"].reply)
    thought = ids[1 : ids.index(THINK_END)]  # between <think> and </think>
    for budget in (0, 3):
        output = FormattedOutput(tiny_tokenizer, MARKERS, thinking_budget=budget)
        fed: list[int] = []
        events: list[InferenceEvent] = []
        model = iter(ids)  # what the model would sample
        while len(fed) < budget + 2:
            forced = output.forced_next()
            token = forced if forced is not None else next(model)
            fed.append(token)
            events += output.feed(token)[0]
        assert fed == [THINK, *thought[:budget], THINK_END]
        assert output.forced_next() is None  # out of reasoning: nothing more is forced
        events += output.feed(_enc(tiny_tokenizer, "Four.")[0])[0] + output.finish()
        reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
        assert reasoning == tiny_tokenizer.decode(thought[:budget]).strip()
        assert output.reasoning_tokens == budget + 2


def test_no_budget_never_forces(tiny_tokenizer: Any) -> None:
    output = FormattedOutput(tiny_tokenizer, MARKERS, start="reasoning")
    for token in _enc(tiny_tokenizer, "a long long thought " * 20):
        assert output.forced_next() is None
        output.feed(token)


def test_forced_tool_start_with_a_name_prefix(tiny_tokenizer: Any) -> None:
    # The prompt holds "<tool_call>" + PREFIX; the model writes the rest, then a second call.
    ids = [*_enc(tiny_tokenizer, '{"city": "Paris"}}\n'), TOOL_END]
    ids += _enc(tiny_tokenizer, "\n" + FIXTURES["tool_call"].reply.replace("Paris", "London"))
    events, _, _ = _run(tiny_tokenizer, ids, start="tool", tool_prefix=PREFIX)
    assert _runs(events) == [
        ("call 0 get_weather", '{"city": "Paris"}'),
        ("call 1 get_weather", '{"city": "London"}'),
    ]


def test_forced_tool_start_that_does_not_parse_shows_the_prefix(tiny_tokenizer: Any) -> None:
    ids = [*_enc(tiny_tokenizer, "oops"), TOOL_END, *_enc(tiny_tokenizer, " sorry")]
    events, _, _ = _run(tiny_tokenizer, ids, start="tool", tool_prefix=PREFIX)
    assert _runs(events) == [("text", f"<tool_call>{PREFIX}oops</tool_call>sorry")]


def test_start_without_a_way_out_is_refused(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="reasoning"):
        FormattedOutput(tiny_tokenizer, Format(tools=MARKERS.tools), start="reasoning")
    with pytest.raises(ValueError, match="tool"):
        FormattedOutput(tiny_tokenizer, Format(think=THINK_SYNTAX), start="tool")


# -- truncation, stops, odd markers ------------------------------------------------------------


def test_truncated_inside_reasoning_is_reasoning(tiny_tokenizer: Any) -> None:
    ids = _enc(tiny_tokenizer, FIXTURES["reasoning"].reply)
    events, _, output = _run(tiny_tokenizer, ids[: ids.index(THINK_END)])
    assert _runs(events) == [("reasoning", "The user wants 2 + 2. That is 4.")]
    assert output.reasoning_tokens == ids.index(THINK_END)


def test_truncated_inside_a_tool_call_is_verbatim_text(tiny_tokenizer: Any) -> None:
    ids = _enc(tiny_tokenizer, FIXTURES["tool_call"].reply)
    cut = ids[: ids.index(TOOL_END)]
    events, _, _ = _run(tiny_tokenizer, cut)
    assert _runs(events) == [("text", tiny_tokenizer.decode(cut))]


def test_tool_call_ends_reasoning(tiny_tokenizer: Any) -> None:
    ids = [THINK, *_enc(tiny_tokenizer, "\nI should look it up.\n"), TOOL]
    ids += _enc(tiny_tokenizer, FIXTURES["tool_call"].reply)[1:]
    events, _, output = _run(tiny_tokenizer, ids)
    assert _runs(events) == [
        ("reasoning", "I should look it up."),
        ("call 0 get_weather", '{"city": "Paris"}'),
    ]
    assert output.reasoning_tokens == ids.index(TOOL)


def test_parallel_tool_calls_false_stops_after_the_first(tiny_tokenizer: Any) -> None:
    ids = _enc(tiny_tokenizer, FIXTURES["two_tool_calls"].reply)
    events, stop, output = _run(tiny_tokenizer, ids, parallel_tool_calls=False)
    assert stop == "</tool_call>"
    assert _runs(events) == [("call 0 get_weather", '{"city": "Paris"}')]
    assert output.finish() == []


def test_parallel_false_keeps_going_past_a_call_that_does_not_parse(tiny_tokenizer: Any) -> None:
    reply = FIXTURES["malformed_tool_call"].reply + FIXTURES["tool_call"].reply
    events, stop, _ = _run(tiny_tokenizer, _enc(tiny_tokenizer, reply), parallel_tool_calls=False)
    assert stop == "</tool_call>"
    assert _runs(events) == [
        ("text", FIXTURES["malformed_tool_call"].reply),
        ("call 0 get_weather", '{"city": "Paris"}'),
    ]


def test_stop_strings_apply_to_text_only(tiny_tokenizer: Any) -> None:
    ids = _enc(tiny_tokenizer, FIXTURES["reasoning"].reply)
    events, stop, output = _run(tiny_tokenizer, ids, stops=("is 4", "user"))
    assert stop == "is 4"
    assert _runs(events) == [
        ("reasoning", "The user wants 2 + 2. That is 4."),
        ("text", "The answer "),
    ]
    assert output.finish() == []


def test_stop_string_held_back_then_released_at_a_marker(tiny_tokenizer: Any) -> None:
    ids = [
        *_enc(tiny_tokenizer, "Checking the wea"),
        *_enc(tiny_tokenizer, FIXTURES["tool_call"].reply),
    ]
    events, stop, _ = _run(tiny_tokenizer, ids, stops=("weather",))
    assert stop is None
    assert _runs(events) == [
        ("text", "Checking the wea"),
        ("call 0 get_weather", '{"city": "Paris"}'),
    ]


def test_markers_out_of_place_are_text(tiny_tokenizer: Any) -> None:
    ids = [*_enc(tiny_tokenizer, "a"), THINK_END, *_enc(tiny_tokenizer, "b"), TOOL_END]
    ids += [THINK, *_enc(tiny_tokenizer, "c"), THINK, TOOL_END, *_enc(tiny_tokenizer, "d")]
    events, _, output = _run(tiny_tokenizer, ids)
    assert _runs(events) == [
        ("text", "a</think>b</tool_call>"),
        ("reasoning", "c<think></tool_call>d"),
    ]
    assert output.reasoning_tokens == len(ids) - ids.index(THINK)


def test_tool_markers_unknown_to_markers_are_plain_text(tiny_tokenizer: Any) -> None:
    output = FormattedOutput(tiny_tokenizer, Format(think=THINK_SYNTAX))
    reply = FIXTURES["tool_call"].reply
    events = [e for token in _enc(tiny_tokenizer, reply) for e in output.feed(token)[0]]
    assert _runs(events + output.finish()) == [("text", reply)]


def test_whitespace_away_from_markers_is_kept_at_the_very_start_and_end(
    tiny_tokenizer: Any,
) -> None:
    ids = _enc(tiny_tokenizer, "  Hi  \n<think>  x  </think>\n y \n")
    assert _runs(_run(tiny_tokenizer, ids)[0]) == [
        ("text", "  Hi"),
        ("reasoning", "x"),
        ("text", "y \n"),
    ]
    only_whitespace = _enc(tiny_tokenizer, "\n\n \n")
    assert _runs(_run(tiny_tokenizer, only_whitespace)[0]) == [("text", "\n\n \n")]


def test_utf8_characters_never_split(tiny_tokenizer: Any) -> None:
    thought, answer = "思考 🙂 café", "答え 🎉 日本語 naïve"
    ids = [THINK, *_enc(tiny_tokenizer, thought), THINK_END, *_enc(tiny_tokenizer, answer)]
    # The case is only interesting if some character spans several tokens.
    assert any("\ufffd" in tiny_tokenizer.decode([token]) for token in ids)
    events, _, _ = _run(tiny_tokenizer, ids)
    assert all("\ufffd" not in e.text for e in events if isinstance(e, Text | Reasoning))
    assert _runs(events) == [("reasoning", thought), ("text", answer)]


class _Table:
    """A stub tokenizer whose tokens carry whitespace inside them, as real BPE vocabularies do
    (".\n\n" is one Qwen token); the tiny tokenizer splits whitespace off every word."""

    VOCAB = ("a", " b", "c\n", ".\n\n", "\n", "  ", "\t", " d ", "<think>", "</think>")

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.VOCAB[token] for token in token_ids)


_T_THINK, _T_THINK_END = 8, 9
_TABLE_MARKERS = Format(
    think=ThinkSyntax("think", Marker(_T_THINK, "<think>"), Marker(_T_THINK_END, "</think>"))
)


def test_whitespace_inside_a_token_is_held_until_it_is_known_to_be_content() -> None:
    output = FormattedOutput(_Table(), _TABLE_MARKERS)
    assert output.feed(0)[0] == [Text("a")]
    assert output.feed(3)[0] == [Text(".")]  # the newlines may be layout before a marker
    assert output.feed(1)[0] == [Text("\n\n b")]
    assert output.feed(2)[0] == [Text("c")]
    assert output.feed(_T_THINK)[0] == []  # the held "\n" was layout
    assert output.finish() == []


def _reference(ids: list[int]) -> list[tuple[str, str]]:
    """The rules applied to the whole output at once: split at markers, strip, merge."""
    segments: list[tuple[str, str, bool]] = []  # (kind, text, follows a marker)
    kind, text, after_marker = "text", "", False
    for token in ids:
        switch = (kind, token) in (("text", _T_THINK), ("reasoning", _T_THINK_END))
        if switch:
            segments.append((kind, text, after_marker))
            kind = "reasoning" if kind == "text" else "text"
            text, after_marker = "", True
        else:
            text += _Table.VOCAB[token]
    segments.append((kind, text, after_marker))
    runs: list[tuple[str, str]] = []
    for at, (kind, text, after_marker) in enumerate(segments):
        if after_marker:
            text = text.lstrip()
        if not (kind == "text" and at == len(segments) - 1):  # text ending the output keeps it
            text = text.rstrip()
        if not text:
            continue
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + text)
        else:
            runs.append((kind, text))
    return runs


@given(ids=st.lists(st.integers(min_value=0, max_value=len(_Table.VOCAB) - 1), max_size=30))
def test_streamed_whitespace_rules_match_the_whole_output_rules(ids: list[int]) -> None:
    output = FormattedOutput(_Table(), _TABLE_MARKERS)
    events = [event for token in ids for event in output.feed(token)[0]]
    assert _runs(events + output.finish()) == _reference(ids)


# -- properties --------------------------------------------------------------------------------

# Pieces rather than characters, so "<", "think" and ">" meet often.
_PIECES = [*'ab <>/=\n\t{}"é日🙂', "think", "tool_call"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)
_BLOCK = st.tuples(st.sampled_from(["text", "reasoning", "tool"]), _TEXT)


def _expected(blocks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The runs the rules say these blocks give, computed from the text, not the tokens."""
    runs: list[tuple[str, str]] = []
    calls = 0
    for at, (kind, text) in enumerate(blocks):
        if kind == "tool":
            arguments = json.dumps({"city": text}, ensure_ascii=False)
            runs.append((f"call {calls} get_weather", arguments))
            calls += 1
            continue
        # Text first in the output keeps its leading whitespace, text last its trailing
        # whitespace; everything else is stripped.
        if not (kind == "text" and at == 0):
            text = text.lstrip()
        if not (kind == "text" and at == len(blocks) - 1):
            text = text.rstrip()
        if not text:
            continue
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + text)
        else:
            runs.append((kind, text))
    return runs


def _merge_text(blocks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for kind, text in blocks:
        if merged and kind == "text" == merged[-1][0]:
            merged[-1] = ("text", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def _encode_blocks(tokenizer: Any, blocks: list[tuple[str, str]]) -> list[int]:
    ids: list[int] = []
    for kind, text in blocks:
        if kind == "text":
            ids += _enc(tokenizer, text)
        elif kind == "reasoning":
            ids += [THINK, *_enc(tokenizer, text), THINK_END]
        else:
            call = {"name": "get_weather", "arguments": {"city": text}}
            ids += [TOOL, *_enc(tokenizer, "\n" + json.dumps(call) + "\n"), TOOL_END]
    return ids


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(_BLOCK, max_size=6),
    sizes=st.lists(st.integers(min_value=1, max_value=7), max_size=20),
)
def test_any_chunking_gives_the_same_events(
    tiny_tokenizer: Any, blocks: list[tuple[str, str]], sizes: list[int]
) -> None:
    blocks = _merge_text(blocks)
    ids = _encode_blocks(tiny_tokenizer, blocks)
    # Markers must come only from the structure, never from the random text.
    structural = 2 * sum(kind != "text" for kind, _ in blocks)
    assume(sum(token in MARKER_IDS for token in ids) == structural)
    one, _, _ = _run(tiny_tokenizer, ids)
    batched, _, _ = _run_batches(tiny_tokenizer, ids, sizes)
    assert _runs(one) == _runs(batched) == _expected(blocks)
    assert all("\ufffd" not in e.text for e in one if isinstance(e, Text | Reasoning))


def _spelled_out(tokenizer: Any, parts: list[str], cuts: list[int]) -> list[int]:
    """Encode each part split at a cut, so marker strings become several ordinary tokens."""
    ids: list[int] = []
    for part, cut in zip(parts, cuts, strict=False):
        at = 1 + cut % max(len(part) - 1, 1)
        ids += _enc(tokenizer, part[:at]) + _enc(tokenizer, part[at:])
    return ids


_LIKE = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "< think>"])


@settings(deadline=None, max_examples=100)
@given(
    parts=st.lists(_LIKE | _TEXT, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=20), min_size=8, max_size=8),
    start=st.sampled_from(["text", "reasoning"]),
)
def test_marker_like_text_is_not_a_marker(
    tiny_tokenizer: Any, parts: list[str], cuts: list[int], start: State
) -> None:
    ids = _spelled_out(tiny_tokenizer, parts, cuts)
    assume(not MARKER_IDS & set(ids))
    events, _, _ = _run(tiny_tokenizer, ids, start=start)
    decoded = tiny_tokenizer.decode(ids)
    # Text that is the whole output keeps its whitespace; reasoning is trimmed.
    expected = decoded if start == "text" else decoded.strip()
    kind = Text if start == "text" else Reasoning
    assert all(isinstance(e, kind) for e in events)
    assert "".join(e.text for e in events if isinstance(e, Text | Reasoning)) == expected


def test_spelled_out_marker_really_is_several_tokens(tiny_tokenizer: Any) -> None:
    ids = _spelled_out(tiny_tokenizer, ["<think>"], [2])
    assert len(ids) > 1
    assert not MARKER_IDS & set(ids)
    assert tiny_tokenizer.decode(ids) == "<think>"
    assert _runs(_run(tiny_tokenizer, ids)[0]) == [("text", "<think>")]


# -- detection -------------------------------------------------------------------------------


def test_detect_finds_the_markers(tiny_tokenizer: Any) -> None:
    fmt = detect(tiny_tokenizer, tiny_tokenizer.chat_template)
    assert fmt == MARKERS
    assert (fmt.tool_format, fmt.reasoning_format) == ("hermes", "think")


def _bare_tokenizer(extra: list[AddedToken] | None = None) -> Any:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["<think> hello </think> <tool_call> world"] * 4, trainer=trainer)
    if extra:
        backend.add_special_tokens(extra)
    return PreTrainedTokenizerFast(tokenizer_object=backend)  # type: ignore[no-untyped-call]


def test_detect_reports_none_without_marker_tokens() -> None:
    fmt = detect(_bare_tokenizer(), None)
    assert fmt == Format()
    assert (fmt.tool_format, fmt.reasoning_format) == ("none", "none")


def test_markers_registered_as_special_tokens_count() -> None:
    tokenizer = _bare_tokenizer([AddedToken("<think>", special=True, normalized=False)])
    assert single_token(tokenizer, "<think>") is not None
    assert single_token(tokenizer, "</think>") is None
    assert detect(tokenizer, None).think is None  # one marker of the pair is not enough


def test_tool_format_from_the_template(tiny_tokenizer: Any) -> None:
    assert detect(tiny_tokenizer, tiny_tokenizer.chat_template).tool_format == "hermes"
    assert detect(tiny_tokenizer, None).tool_format == "hermes"
    xml = "{{- '<tool_call>\\n<function=' + name + '>\\n' }}"
    assert detect(tiny_tokenizer, xml).tool_format == "qwen3_coder"


def test_a_call_opened_inside_an_unclosed_one_releases_it_as_text(tiny_tokenizer: Any) -> None:
    newline = _enc(tiny_tokenizer, "\n")
    output = FormattedOutput(tiny_tokenizer, MARKERS)
    streamed = [
        e for token in [TOOL, *newline, TOOL, *newline, TOOL] for e in output.feed(token)[0]
    ]
    # Released as it goes, not only when generation ends.
    assert "".join(e.text for e in streamed if isinstance(e, Text)) == "<tool_call>\n<tool_call>\n"
    rest = output.finish()
    assert "".join(e.text for e in rest if isinstance(e, Text)) == "<tool_call>"
