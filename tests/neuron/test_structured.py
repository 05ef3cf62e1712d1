"""Structured outputs' pure parts and matchers: the closing of cut-off JSON, request → rules,
the per-model grammar cache, a sequence's phases, and the engine's row masks."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from cortex.errors import InvalidRequest
from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.engine.constrain import Masks, accept_rows
from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.formats import Format, detect
from cortex.neuron.formats.grammar import json_expr
from cortex.neuron.structured import rules as structured
from cortex.neuron.structured.closing import closing
from cortex.neuron.structured.matcher import Closers, Constraint, Grammars, narrow
from cortex.neuron.wire.output import TextOutput
from cortex.protocol.openai import ChatCompletionRequest

# -- closing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        '{"a": [1, "x',
        '{"a',
        '{"a"',
        '{"a":',
        '{"a": ',
        '{"a": 1',
        '{"a": 1,',
        '{"a": 1, ',
        '{"a": tr',
        '{"a": nu',
        "[1, 2",
        "[",
        "{",
        '{"a": "x\\',
        '{"a": "\\u00',
        '{"a": -',
        '{"a": 1.',
        '{"a": {"b": [{"c": [',
        '"ab',
    ],
)
def test_closing_makes_any_cut_off_json_parse(prefix: str) -> None:
    suffix = closing(prefix)
    assert suffix
    json.loads(prefix + suffix)


def test_closing_of_whole_and_of_non_json() -> None:
    assert closing('{"a": 1}') == ""
    assert closing("hello") is None
    assert closing('{"a": 1}}') is None
    assert closing("") is None


# -- rules -----------------------------------------------------------------------------------


def _request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    )


def test_a_request_that_constrains_nothing_has_no_rules() -> None:
    assert structured.rules(_request(), Format()) is None
    assert structured.rules(_request(response_format={"type": "text"}), Format()) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_impossible_requests_are_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        structured.rules(_request(**body), Format())
    assert caught.value.param == param


# -- grammars and matchers on the tiny tokenizer ---------------------------------------------


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer: Any) -> Grammars:
    return Grammars(tiny_tokenizer, {tiny_tokenizer.eos_token_id})


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_a_grammar_compiles_once_and_each_sequence_gets_its_own_matcher(
    grammars: Grammars, tiny_tokenizer: Any
) -> None:
    grammar = f"start: {json_expr({'type': 'object', 'title': 'cache test'})}\n"
    before = grammars.compiled
    one = grammars.compile(grammar, "response_format")
    two = grammars.compile(grammar, "response_format")
    assert grammars.compiled == before + 1
    assert one.consume_tokens(_ids(tiny_tokenizer, '{"a": 1}'))
    assert one.is_accepting()
    assert not two.is_accepting()  # untouched by the other sequence


def test_a_schema_the_library_refuses_is_an_invalid_request(grammars: Grammars) -> None:
    with pytest.raises(InvalidRequest) as caught:
        grammars.compile(f"start: {json_expr({'type': 'objekt'})}\n", "response_format")
    assert caught.value.param == "response_format"
    assert "objekt" in caught.value.message


def _fmt(tokenizer: Any) -> Format:
    return detect(tokenizer, tokenizer.chat_template)


def _constraint(
    tokenizer: Any, grammars: Grammars, where: structured.Start, rules: structured.Rules
) -> Constraint:
    fmt = _fmt(tokenizer)
    assert fmt.think is not None
    direct = after = None
    if where in ("text", "either"):
        first: structured.Start = "opening" if where == "either" else "text"
        direct = grammars.compile(structured.grammar(rules, fmt, first), "x")
    if where in ("reasoning", "either"):
        after = grammars.compile(structured.grammar(rules, fmt, "answer"), "x")
    return Constraint(
        direct,
        after,
        whole=structured.grammar(rules, fmt, where),
        answer=structured.grammar(rules, fmt, "answer"),
        phase="answer" if where == "text" else "reasoning" if where == "reasoning" else "either",
        vocab_size=grammars.vocab_size,
        tokenizer=tokenizer,
        eos=tokenizer.eos_token_id,
        think=(fmt.think.start.id, fmt.think.end.id),
        reasoning=grammars.reasoning_mask(fmt.think.end.id),
        closers=grammars.closers(),
    )


CHOICE = structured.Rules(content='("yes" | "no")')


def test_reasoning_is_not_held_to_the_grammar(tiny_tokenizer: Any, grammars: Grammars) -> None:
    fmt = _fmt(tiny_tokenizer)
    assert fmt.think is not None
    constraint = _constraint(tiny_tokenizer, grammars, "either", CHOICE)
    assert constraint.accept(fmt.think.start.id) is None
    bitmask = torch.zeros((1, constraint.words), dtype=torch.int32)
    constraint.fill(bitmask, 0)  # reasoning: anything but special tokens and the end
    bits = ((bitmask[0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    assert bits[fmt.think.end.id] == 1
    assert bits[tiny_tokenizer.eos_token_id] == 0
    assert bits[_ids(tiny_tokenizer, "{")[0]] == 1
    for token in _ids(tiny_tokenizer, "anything at all, even {{ and ]]"):
        assert constraint.accept(token) is None
    assert constraint.accept(fmt.think.end.id) is None
    for token in _ids(tiny_tokenizer, "\n\nyes"):  # the layout, then the answer
        assert constraint.accept(token) is None
    assert constraint.accept(_ids(tiny_tokenizer, "x")[0]) is not None  # nothing more fits


def test_an_answer_that_starts_at_once_takes_no_leading_space(
    tiny_tokenizer: Any, grammars: Grammars
) -> None:
    constraint = _constraint(tiny_tokenizer, grammars, "text", CHOICE)
    assert constraint.accept(_ids(tiny_tokenizer, " ")[0]) is not None


def _seq(tokenizer: Any, constraint: Constraint | None) -> Sequence:
    request = InferenceRequest(
        request_id="r",
        prompt_ids=[1, 2],
        params=SamplingParams(max_tokens=16),
        output=TextOutput(tokenizer),
        eos_token_ids=frozenset({tokenizer.eos_token_id}),
        constraint=constraint,
    )
    return Sequence(request=request, sink=None)  # type: ignore[arg-type]


def test_masks_touch_constrained_rows_only(tiny_tokenizer: Any, grammars: Grammars) -> None:
    constrained = _seq(tiny_tokenizer, _constraint(tiny_tokenizer, grammars, "text", CHOICE))
    free = _seq(tiny_tokenizer, None)
    vocab = grammars.vocab_size + 5  # a model's head may have more rows than the tokenizer
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    assert Masks([free, constrained]).apply(logits, [free, constrained]) == {}
    assert torch.equal(logits[0], before[0])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    texts = {tiny_tokenizer.decode([t]) for t in allowed}
    assert texts
    assert all("yes".startswith(t) or "no".startswith(t) for t in texts), texts
    token = int(logits[1].argmax())
    assert accept_rows([free, constrained], [5, token]) == {}


def test_json_cut_by_the_length_limit_is_closed(tiny_tokenizer: Any, grammars: Grammars) -> None:
    rules = structured.Rules(content=json_expr({"type": "object"}))
    constraint = _constraint(tiny_tokenizer, grammars, "text", rules)
    for token in _ids(tiny_tokenizer, '{"key": [1, "some text'):
        assert constraint.accept(token) is None
    assert constraint.forced(room=200) is None  # far from the limit: sample
    taken: list[int] = []
    for room in range(48, 0, -1):  # the limit comes nearer (nothing sampled meanwhile)
        token = constraint.forced(room)
        if token is None:
            assert not taken  # once closing, it goes on to the end
            continue
        taken.append(token)
        if token == tiny_tokenizer.eos_token_id:
            break
        assert constraint.accept(token) is None
    assert taken[-1] == tiny_tokenizer.eos_token_id
    text = '{"key": [1, "some text' + tiny_tokenizer.decode(taken[:-1])
    assert json.loads(text) == {"key": [1, "some text"]}


def test_near_the_limit_an_open_string_may_only_end(
    tiny_tokenizer: Any, grammars: Grammars
) -> None:
    rules = structured.Rules(content=json_expr({"type": "object"}))
    constraint = _constraint(tiny_tokenizer, grammars, "text", rules)
    for token in _ids(tiny_tokenizer, '{"key": "some'):
        assert constraint.accept(token) is None
    assert constraint.narrowing(room=500) is None  # far from the limit: untouched
    found = constraint.narrowing(room=20)
    assert found is not None
    closers, inside = found
    assert inside
    everything = torch.ones((1, grammars.vocab_size), dtype=torch.bool)
    narrowed = narrow(everything, closers, torch.tensor([inside]))[0]
    texts = [tiny_tokenizer.decode([t]) for t in narrowed.nonzero().flatten().tolist()]
    assert texts
    assert all('"' in text for text in texts)


def test_narrow_takes_the_first_class_the_grammar_allows_row_by_row() -> None:
    def bools(*on: int) -> torch.Tensor:
        return torch.tensor([i in on for i in range(6)])

    # Token 0 holds a quote; 1 closes; 2 is a comma; 3 starts a short value; 4, 5 neither.
    closers = Closers(quote=bools(0), close=bools(1), comma=bools(2), short=bools(0, 3))
    allowed = torch.stack([bools(0, 4), bools(2, 3, 4), bools(3, 5), bools(4, 5), bools(0, 1)])
    inside = torch.tensor([True, False, False, False, True])
    narrowed = narrow(allowed, closers, inside)
    assert narrowed.tolist() == [
        bools(0).tolist(),  # in a string: what ends it
        bools(2).tolist(),  # outside: no closer allowed, so a comma
        bools(3).tolist(),  # then a short value
        bools(4, 5).tolist(),  # none of them allowed: the grammar's own
        bools(0).tolist(),
    ]
