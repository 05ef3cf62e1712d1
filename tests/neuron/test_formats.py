"""Every family's output format, detected from a vocabulary and a template, streamed from token
ids into events: reasoning, text and calls come out structured whatever the chunking, a call
that does not parse comes back verbatim, and what cortex writes itself parses back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.neuron.formats import Format, detect
from cortex.neuron.wire.events import InferenceEvent, Reasoning, Text, ToolCall
from cortex.neuron.wire.harmony import HarmonyOutput
from cortex.neuron.wire.stream import FormattedOutput, start_state
from cortex.testing import TIME_TOOL, WEATHER_TOOL

DAYS_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "forecast",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}
TOOLS = [WEATHER_TOOL, TIME_TOOL, DAYS_TOOL]


class Pieces:
    """A tokenizer whose ordinary tokens are whatever strings a test splits its text into, and
    whose markers are single special tokens, so any chunking of a reply can be fed."""

    def __init__(self, markers: Sequence[str]) -> None:
        self.markers = {text: i for i, text in enumerate(markers)}
        self.vocab: list[str] = list(markers)

    def piece(self, text: str) -> int:
        self.vocab.append(text)
        return len(self.vocab) - 1

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if text in self.markers:
            return [self.markers[text]]
        return [self.piece(c) for c in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(
            "" if (skip_special_tokens and i < len(self.markers)) else self.vocab[i]
            for i in token_ids
        )

    def ids(self, reply: Sequence[str], cuts: Sequence[int] = ()) -> list[int]:
        """``reply`` as token ids: markers as themselves, text split at ``cuts`` (positions
        within each piece of text, taken in turn)."""
        ids: list[int] = []
        turn = iter(cuts)
        for part in reply:
            if part in self.markers:
                ids.append(self.markers[part])
                continue
            at = 0
            while at < len(part):
                size = 1 + next(turn, len(part)) % max(len(part) - at, 1)
                ids.append(self.piece(part[at : at + size]))
                at += size
        return ids


@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]
    template: str
    tool_format: str
    reasoning_format: str


THINK = ("<think>", "</think>")
FAMILIES = {
    f.name: f
    for f in (
        Family("qwen3", (*THINK, "<tool_call>", "</tool_call>"), "<think>", "hermes", "think"),
        Family("qwen3-coder", ("<tool_call>", "</tool_call>"), "<function=", "qwen3_coder", "none"),
        Family(
            "glm",
            (*THINK, "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>"),
            "<arg_key> <think>",
            "glm",
            "think",
        ),
        Family(
            "gpt-oss",
            ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|constrain|>"),
            "",
            "harmony",
            "harmony",
        ),
        Family("llama3", ("<|python_tag|>", "<|eot_id|>"), "", "llama_json", "none"),
        Family("phi4-mini", ("<|tool_call|>", "<|/tool_call|>"), "", "json_list", "none"),
        Family(
            "mistral",
            ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]"),
            "[THINK]",
            "mistral",
            "mistral",
        ),
        Family("mistral-nemo", ("[TOOL_CALLS]",), "", "mistral", "none"),
        Family(
            "deepseek-v3.1",
            (
                *THINK,
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁calls▁end｜>",
                "<｜tool▁call▁begin｜>",
                "<｜tool▁call▁end｜>",
                "<｜tool▁sep｜>",
            ),
            "</think>",
            "deepseek",
            "think",
        ),
        Family(
            "r1-distill",
            (*THINK, "<tool_call>", "</tool_call>"),
            "<think>\n ```json <｜tool▁calls▁begin｜>",
            "deepseek",
            "think",
        ),
        Family(
            "kimi",
            (
                "<|tool_calls_section_begin|>",
                "<|tool_calls_section_end|>",
                "<|tool_call_begin|>",
                "<|tool_call_argument_begin|>",
                "<|tool_call_end|>",
            ),
            "",
            "kimi",
            "none",
        ),
        Family("pythonic", (), "[func_name1(params_name1=params_value1)]", "pythonic", "none"),
    )
}


@dataclass(frozen=True)
class Sample:
    family: str
    reply: tuple[str, ...]  # markers and text, in order
    reasoning: str
    content: str
    calls: tuple[tuple[str, dict[str, Any]], ...]
    start: str = "text"


PARIS, LONDON = {"city": "Paris"}, {"city": "London"}
DS = {
    "calls": "<｜tool▁calls▁begin｜>",
    "end": "<｜tool▁calls▁end｜>",
    "call": "<｜tool▁call▁begin｜>",
    "call_end": "<｜tool▁call▁end｜>",
    "sep": "<｜tool▁sep｜>",
}
KIMI = (
    "<|tool_calls_section_begin|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
    "<|tool_calls_section_end|>",
)

SAMPLES = [
    Sample(
        "qwen3",
        (
            "<think>",
            "\nThe user wants weather.\n",
            "</think>",
            "\n\nLet me check.\n",
            "<tool_call>",
            '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
            "</tool_call>",
            "\n",
            "<tool_call>",
            '\n{"name": "get_weather", "arguments": {"city": "London"}}\n',
            "</tool_call>",
        ),
        "The user wants weather.",
        "Let me check.",
        (("get_weather", PARIS), ("get_weather", LONDON)),
    ),
    Sample(
        "qwen3-coder",
        (
            "<tool_call>",
            "\n<function=forecast>\n<parameter=city>\nParis\n</parameter>\n"
            "<parameter=days>\n3\n</parameter>\n</function>\n",
            "</tool_call>",
        ),
        "",
        "",
        (("forecast", {"city": "Paris", "days": 3}),),
    ),
    Sample(
        "glm",
        (
            "<think>",
            "Weather in two cities.",
            "</think>",
            "\n",
            "<tool_call>",
            "get_weather\n",
            "<arg_key>",
            "city",
            "</arg_key>",
            "\n<arg_value>Paris</arg_value>\n",
            "</tool_call>",
            "\n",
            "<tool_call>",
            "forecast\n",
            "<arg_key>",
            "city",
            "</arg_key>",
            "\n<arg_value>London</arg_value>\n",
            "<arg_key>",
            "days",
            "</arg_key>",
            "\n<arg_value>3</arg_value>\n",
            "</tool_call>",
        ),
        "Weather in two cities.",
        "",
        (("get_weather", PARIS), ("forecast", {"city": "London", "days": 3})),
    ),
    Sample(
        "gpt-oss",
        (
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Need the weather.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "commentary to=functions.get_weather ",
            "<|constrain|>",
            "json",
            "<|message|>",
            '{"city": "Paris"}',
        ),
        "Need the weather.",
        "",
        (("get_weather", PARIS),),
    ),
    Sample(
        "gpt-oss",
        (
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Two plus two.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "final",
            "<|message|>",
            "It is 4.",
        ),
        "Two plus two.",
        "It is 4.",
        (),
    ),
    Sample(
        "llama3",
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "get_weather", "parameters": {"city": "London"}}',
        ),
        "",
        "",
        (("get_weather", PARIS), ("get_weather", LONDON)),
    ),
    Sample(
        "llama3",
        ("<|python_tag|>", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
        "",
        "",
        (("get_weather", PARIS),),
    ),
    Sample(
        "llama3",
        ('{"answer": 4} is the JSON you asked for.',),
        "",
        '{"answer": 4} is the JSON you asked for.',
        (),
    ),
    Sample(
        "phi4-mini",
        (
            'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_weather", "arguments": {"city": "London"}}]',
        ),
        "",
        "",
        (("get_weather", PARIS), ("get_weather", LONDON)),
    ),
    Sample(
        "mistral",
        (
            "[THINK]",
            "Two cities.",
            "[/THINK]",
            "Checking.",
            "[TOOL_CALLS]",
            "get_weather",
            "[ARGS]",
            '{"city": "Paris"}',
            "[TOOL_CALLS]",
            "get_weather",
            "[CALL_ID]",
            "a1b2c3d4e",
            "[ARGS]",
            '{"city": "London"}',
        ),
        "Two cities.",
        "Checking.",
        (("get_weather", PARIS), ("get_weather", LONDON)),
    ),
    Sample(
        "mistral-nemo",
        (
            "[TOOL_CALLS]",
            '[{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, '
            '{"name": "get_weather", "arguments": {"city": "London"}}]',
        ),
        "",
        "",
        (("get_weather", PARIS), ("get_weather", LONDON)),
    ),
    Sample(
        "deepseek-v3.1",
        (
            "The user asks.",
            "</think>",
            "Checking.",
            DS["calls"],
            DS["call"],
            "get_weather",
            DS["sep"],
            '{"city": "Paris"}',
            DS["call_end"],
            DS["call"],
            "function",
            DS["sep"],
            'get_weather\n```json\n{"city": "London"}\n```',
            DS["call_end"],
            DS["end"],
        ),
        "The user asks.",
        "Checking.",
        (("get_weather", PARIS), ("get_weather", LONDON)),
        start="reasoning",
    ),
    Sample(
        "r1-distill",
        (
            "Weather, twice.",
            "</think>",
            "\n\n" + DS["calls"] + DS["call"] + "function" + DS["sep"] + "get_weather\n```json\n"
            '{"city": "Paris"}\n```'
            + DS["call_end"]
            + "\n"
            + DS["call"]
            + "function"
            + DS["sep"]
            + 'get_weather\n```json\n{"city": "London"}\n```'
            + DS["call_end"]
            + DS["end"],
        ),
        "Weather, twice.",
        "",
        (("get_weather", PARIS), ("get_weather", LONDON)),
        start="reasoning",
    ),
    Sample(
        "kimi",
        (
            "Let me look.",
            KIMI[0],
            KIMI[1],
            "functions.get_weather:0",
            KIMI[2],
            '{"city": "Paris"}',
            KIMI[3],
            KIMI[1],
            "functions.get_time:1",
            KIMI[2],
            '{"city": "London"}',
            KIMI[3],
            KIMI[4],
        ),
        "",
        "Let me look.",
        (("get_weather", PARIS), ("get_time", LONDON)),
    ),
    Sample(
        "pythonic",
        ('[get_weather(city="Paris"), forecast(city="London", days=3)]',),
        "",
        "",
        (("get_weather", PARIS), ("forecast", {"city": "London", "days": 3})),
    ),
    Sample("pythonic", ("[1] is the first footnote.",), "", "[1] is the first footnote.", ()),
]


def _setup(family: Family) -> tuple[Pieces, Format]:
    tokenizer = Pieces(family.markers)
    fmt = detect(tokenizer, family.template)
    assert (fmt.tool_format, fmt.reasoning_format) == (
        family.tool_format,
        family.reasoning_format,
    )
    return tokenizer, fmt


def _output(tokenizer: Pieces, fmt: Format, start: str = "text", **options: Any) -> Any:
    if fmt.harmony is not None:
        return HarmonyOutput(tokenizer, fmt.harmony, tools=TOOLS, **options)
    return FormattedOutput(tokenizer, fmt, start=start, tools=TOOLS, **options)  # type: ignore[arg-type]


def _feed(output: Any, ids: Sequence[int], complete: bool = True) -> list[InferenceEvent]:
    events: list[InferenceEvent] = []
    for token in ids:
        new, stop = output.feed(token)
        events += new
        if stop is not None:
            return events
    return events + output.finish(complete)


def _parsed(events: list[InferenceEvent]) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    content = "".join(e.text for e in events if isinstance(e, Text))
    calls = tuple((e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall))
    assert [e.index for e in events if isinstance(e, ToolCall)] == list(range(len(calls)))
    return reasoning, content, calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_detected_from_vocabulary_and_template(family: str) -> None:
    _setup(FAMILIES[family])


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.family)
def test_a_reply_comes_out_structured(sample: Sample) -> None:
    family = FAMILIES[sample.family]
    tokenizer, fmt = _setup(family)
    events = _feed(_output(tokenizer, fmt, sample.start), tokenizer.ids(sample.reply))
    assert _parsed(events) == (sample.reasoning, sample.content, sample.calls)
    if sample.calls:  # no marker or control token reaches the text
        for marker in family.markers:
            assert marker not in sample.content


@settings(deadline=None, max_examples=40)
@given(data=st.data())
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.family)
def test_any_chunking_gives_the_same_result(sample: Sample, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=40), max_size=60))
    tokenizer, fmt = _setup(FAMILIES[sample.family])
    events = _feed(_output(tokenizer, fmt, sample.start), tokenizer.ids(sample.reply, cuts))
    assert _parsed(events) == (sample.reasoning, sample.content, sample.calls)


BROKEN = [
    (
        "qwen3",
        ("<tool_call>", '\n{"name": "get_weather", "arguments": {"city": \n', "</tool_call>"),
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
    ),
    (
        "glm",
        ("<tool_call>", "get_weather\n", "<arg_key>", "city", "</arg_key>", "\nParis\n"),
        "<tool_call>get_weather\n<arg_key>city</arg_key>\nParis\n",
    ),
    (
        "glm",
        ("<tool_call>", "get_weather\n<arg_value>Paris</arg_value>", "</tool_call>"),
        "<tool_call>get_weather\n<arg_value>Paris</arg_value></tool_call>",
    ),
    (
        "gpt-oss",
        (
            "<|channel|>",
            "commentary to=functions.get_weather ",
            "<|constrain|>",
            "json",
            "<|message|>",
            '{"city": "Paris"',
        ),
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": '
        '"Paris"<|call|>',
    ),
    (
        "llama3",
        ('{"name": "get_weather", "parameters": {"city": "Paris"}',),
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
    ),
    (
        "llama3",
        ("<|python_tag|>", '{"name": "get_weather"} and more'),
        '<|python_tag|>{"name": "get_weather"} and more',
    ),
    ("phi4-mini", ('functools[{"name": "x"}, 3]',), 'functools[{"name": "x"}, 3]'),
    (
        "mistral",
        ("[TOOL_CALLS]", "get_weather", "[ARGS]", '{"city": "Paris"'),
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"',
    ),
    (
        "deepseek-v3.1",
        (DS["calls"], DS["call"], "get_weather", DS["call_end"], DS["end"]),
        DS["calls"] + DS["call"] + "get_weather" + DS["call_end"] + DS["end"],
    ),
    (
        "kimi",
        (KIMI[0], KIMI[1], "functions.get_weather:0", KIMI[3], KIMI[4]),
        KIMI[0] + KIMI[1] + "functions.get_weather:0" + KIMI[3] + KIMI[4],
    ),
    (
        "pythonic",
        ('[get_weather(city=open("/etc/passwd"))]',),
        '[get_weather(city=open("/etc/passwd"))]',
    ),
]


@pytest.mark.parametrize(("family", "reply", "content"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_call_that_does_not_parse_comes_back_verbatim(
    family: str, reply: tuple[str, ...], content: str
) -> None:
    tokenizer, fmt = _setup(FAMILIES[family])
    events = _feed(_output(tokenizer, fmt), tokenizer.ids(reply))
    assert _parsed(events) == ("", content, ())


@pytest.mark.parametrize(
    "family", [f for f in sorted(FAMILIES) if FAMILIES[f].tool_format != "harmony"]
)
def test_calls_cortex_writes_parse_back(family: str) -> None:
    tokenizer, fmt = _setup(FAMILIES[family])
    syntax = fmt.tools
    assert syntax is not None
    calls = [("get_weather", PARIS), ("forecast", {"city": "Oslo", "days": 2})]
    written = syntax.write(calls)
    ids = _split_markers(tokenizer, written)
    events = _feed(_output(tokenizer, fmt), ids)
    assert _parsed(events)[2] == tuple(calls)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", [None, "get_weather"])
def test_a_forced_call_opens_in_the_family_form(family: str, name: str | None) -> None:
    """What ``tool_choice`` puts in the prompt, then what the model writes after it."""
    tokenizer, fmt = _setup(FAMILIES[family])
    if fmt.harmony is not None:
        h = fmt.harmony
        output: Any = HarmonyOutput(
            tokenizer,
            h,
            tools=TOOLS,
            forced=_split_markers(tokenizer, "<|channel|>analysis<|message|>"),
            deferred=_split_markers(tokenizer, "<|start|>assistant" + h.opening(name)),
        )
        rest = "Need the weather.<|end|>" + (
            "get_weather <|constrain|>json<|message|>" if name is None else ""
        )
        events = _drive(output, _split_markers(tokenizer, rest + '{"city": "Paris"}'))
        assert _parsed(events) == ("Need the weather.", "", (("get_weather", PARIS),))
        return
    syntax = fmt.tools
    assert syntax is not None
    opened = syntax.opening(name)
    whole = syntax.write([("get_weather", PARIS)])
    start = (syntax.start.text if syntax.start and not syntax.by_text else "") + opened
    assert whole.startswith(start), (whole, start)
    rest = whole[len(start) :]
    output = FormattedOutput(tokenizer, fmt, start="tool", tool_prefix=opened, tools=TOOLS)
    events = _feed(output, _split_markers(tokenizer, rest))
    assert _parsed(events) == ("", "", (("get_weather", PARIS),))


def _drive(output: Any, model: Sequence[int]) -> list[InferenceEvent]:
    """Generate as the engine does: a forced token wins over what the model would write."""
    events: list[InferenceEvent] = []
    written = iter(model)
    while True:
        token = output.forced_next()
        if token is None:
            sampled = next(written, None)
            if sampled is None:
                return events + output.finish(True)
            token = output.redirect(sampled)
        events += output.feed(token)[0]


@pytest.mark.parametrize("start", ["text", "reasoning"])
@pytest.mark.parametrize("family", ["qwen3", "deepseek-v3.1", "r1-distill", "mistral", "glm"])
def test_a_forced_call_lets_the_model_reason_first(family: str, start: Any) -> None:
    """A model that can reason: the opening takes the place of its first token outside
    reasoning that is not layout, whether the template opened reasoning or the model does."""
    tokenizer, fmt = _setup(FAMILIES[family])
    syntax = fmt.tools
    assert syntax is not None
    think = fmt.think
    assert think is not None
    opening = (syntax.start.text if syntax.start and not syntax.by_text else "") + syntax.opening(
        "get_weather"
    )
    whole = syntax.write([("get_weather", PARIS)])
    output = FormattedOutput(
        tokenizer, fmt, start=start, tools=TOOLS, opening=_split_markers(tokenizer, opening)
    )
    # The model opens its reasoning (or finds it open), reasons, ends it, writes layout and
    # then "Sure" (which the opening takes the place of), then the rest of the call.
    reasoning = ("" if start == "reasoning" else think.start.text) + "It must be a call."
    model = _split_markers(tokenizer, reasoning + think.end.text + "\n\n")
    model += [tokenizer.piece("Sure"), *_split_markers(tokenizer, whole[len(opening) :])]
    events = _drive(output, model)
    assert _parsed(events) == ("It must be a call.", "", (("get_weather", PARIS),))


def _split_markers(tokenizer: Pieces, text: str) -> list[int]:
    """Encode text that holds marker strings: markers as their ids, the rest as pieces."""
    ids: list[int] = []
    at = 0
    while at < len(text):
        found = [(text.find(m, at), m) for m in tokenizer.markers if text.find(m, at) >= 0]
        if not found:
            ids += tokenizer.encode(text[at:])
            break
        where, marker = min(found)
        ids += [*tokenizer.encode(text[at:where]), tokenizer.markers[marker]]
        at = where + len(marker)
    return ids


def test_a_call_cut_off_by_max_tokens_is_text() -> None:
    tokenizer, fmt = _setup(FAMILIES["mistral"])
    reply = ("[TOOL_CALLS]", "get_weather", "[ARGS]", '{"city": "Paris"}')
    events = _feed(_output(tokenizer, fmt), tokenizer.ids(reply), complete=False)
    assert _parsed(events) == ("", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', ())


def test_a_reply_that_only_starts_like_a_call_streams_once_it_cannot_be_one() -> None:
    tokenizer, fmt = _setup(FAMILIES["llama3"])
    output = _output(tokenizer, fmt)
    held = [output.feed(i)[0] for i in tokenizer.ids(('{"na',), cuts=(0, 0, 0, 0))]
    assert held == [[], [], [], []]  # it could still be {"name": …
    released = output.feed(tokenizer.ids(("x",))[0])[0]
    assert "".join(e.text for e in released if isinstance(e, Text)) == '{"nax'


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    for sample in SAMPLES:
        if len(sample.calls) < 2:
            continue
        tokenizer, fmt = _setup(FAMILIES[sample.family])
        output = _output(tokenizer, fmt, sample.start, parallel_tool_calls=False)
        calls = _parsed(_feed(output, tokenizer.ids(sample.reply)))[2]
        assert calls == sample.calls[:1]


def test_start_state_for_a_template_that_opened_reasoning() -> None:
    tokenizer, fmt = _setup(FAMILIES["deepseek-v3.1"])
    opened = tokenizer.encode("<think>")
    assert start_state([*tokenizer.encode("Hi"), *opened], fmt.think) == "reasoning"
    closed = tokenizer.encode("</think>")
    assert start_state([*opened, *closed], fmt.think) == "text"
