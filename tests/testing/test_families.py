"""The model families' tiny models: tokens, templates against the real ones, trained replies."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from cortex.testing import FIXTURES, SYSTEM_PROMPT, TIME_TOOL, WEATHER_TOOL, cache_key
from cortex.testing.__main__ import main
from cortex.testing.families import (
    FAMILIES,
    Family,
    build_family_tokenizer,
    cached_family_model,
    family_cache_key,
    family_examples,
    fixture_prompt_ids,
    verify_family_model,
)
from cortex.testing.tokenizer import VOCAB_SIZE, token_id

NAMES = sorted(FAMILIES)
CASES = [(name, fixture.name) for name in NAMES for fixture in FAMILIES[name].fixtures]

# The real chat templates these families stand in for: never copied into the repository, only
# compared against where they are found (a shared/ folder in the checkout or beside it).
_ROOTS = Path(__file__).resolve().parents[2:4]
_TEMPLATES = [root / "shared" / "families" / "templates" for root in _ROOTS]
REAL_TEMPLATES = next((path for path in _TEMPLATES if path.is_dir()), None)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PreTrainedTokenizerFast]:
    """Every family's tokenizer, saved and reloaded from disk as serving code gets it."""
    loaded = {}
    for name in NAMES:
        folder = tmp_path_factory.mktemp(f"tokenizer-{name}")
        build_family_tokenizer(name).save_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert isinstance(tokenizer, PreTrainedTokenizerFast)
        loaded[name] = tokenizer
    return loaded


def test_the_catalogue_covers_every_family() -> None:
    assert set(FAMILIES) == {
        "qwen3", "qwq", "qwen3-coder", "hermes3", "glm45", "gpt-oss", "llama3.1", "llama3.2",
        "mistral-small-3.2", "mistral-nemo", "devstral", "ministral-3-reasoning",
        "deepseek-v3.1", "r1-distill-qwen", "kimi-k2", "kimi-k2-0711", "gemma3", "phi4-mini",
    }  # fmt: skip
    for name, family in FAMILIES.items():
        assert family.name == name
        assert family.chat_template()
        assert len({fixture.name for fixture in family.fixtures}) == len(family.fixtures)
        assert {"plain", "tool_call", "tool_result"} <= {f.name for f in family.fixtures}
    # gpt-oss ends its turn at the first call, so it has no two-call fixture.
    assert "two_tool_calls" not in {f.name for f in FAMILIES["gpt-oss"].fixtures}


def test_qwen3_is_the_original_tiny_model() -> None:
    qwen3 = FAMILIES["qwen3"]
    assert qwen3.template == "chat_template.jinja"
    for fixture in qwen3.fixtures:
        original = FIXTURES[fixture.name]
        assert (fixture.messages, fixture.tools, fixture.reply) == (
            original.messages,
            original.tools,
            original.reply,
        )
    assert family_cache_key("qwen3") == cache_key(trained=True)


@pytest.mark.parametrize("name", NAMES)
def test_added_tokens_are_single_ids(
    tokenizers: dict[str, PreTrainedTokenizerFast], name: str
) -> None:
    family, tokenizer = FAMILIES[name], tokenizers[name]
    assert len(tokenizer) == VOCAB_SIZE
    for token in family.added_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tokenizer.decode(ids) == token
        # Special tokens vanish with skip_special_tokens=True; control tokens stay, so parsers
        # that decode that way still see them.
        kept = tokenizer.decode(ids, skip_special_tokens=True)
        assert kept == ("" if token in family.special_tokens else token), token
    assert tokenizer.bos_token == family.bos
    assert tokenizer.eos_token == family.eos
    assert tokenizer.pad_token == family.pad


@pytest.mark.parametrize(("name", "fixture_name"), CASES)
def test_fixture_conversations_render(
    tokenizers: dict[str, PreTrainedTokenizerFast], name: str, fixture_name: str
) -> None:
    # Through the neuron's render, which adapts messages to what each template accepts.
    tokenizer = tokenizers[name]
    fixture = FAMILIES[name].fixture(fixture_name)
    prompt = tokenizer.decode(fixture_prompt_ids(tokenizer, fixture))
    assert fixture.messages[0]["content"] in prompt


@pytest.mark.parametrize("name", NAMES)
def test_training_examples(tokenizers: dict[str, PreTrainedTokenizerFast], name: str) -> None:
    # Every fixture's prompt variants render, each reply tokenizes back to itself and ends with
    # a token that stops generation, and no two fixtures share a prompt.
    family, tokenizer = FAMILIES[name], tokenizers[name]
    examples = family_examples(family, tokenizer)
    assert [e.fixture for e in examples if e.exact] == [f.name for f in family.fixtures]
    stops = {token_id(tokenizer, token) for token in family.generation_eos}
    for example in examples:
        assert example.reply_ids[-1] in stops
        assert not stops & set(example.reply_ids[:-1])


@pytest.mark.parametrize(("name", "fixture_name"), CASES)
def test_replies_hold_what_a_client_gets(name: str, fixture_name: str) -> None:
    fixture = FAMILIES[name].fixture(fixture_name)
    expected, reply = fixture.expected, fixture.reply
    # A reply either answers or calls tools; reasoning, if any, comes first.
    assert bool(expected.content) != bool(expected.calls)
    assert expected.content in reply
    assert expected.reasoning in reply
    if expected.reasoning and expected.content:
        assert reply.index(expected.reasoning) < reply.rindex(expected.content)
    position = 0
    for function, arguments in expected.calls:
        for part in (function, *map(str, arguments.values())):
            position = reply.index(part, position)


def _round(name: str, calls: int) -> list[dict[str, Any]]:
    """A user turn, an assistant turn with ``calls`` calls and their results, in the shape the
    real template accepts (nine-character ids; string arguments and no content where the
    template concatenates them or keys on ``content is none``)."""
    as_string = name in ("deepseek-v3.1", "r1-distill-qwen")
    cities = ["Paris", "London"][:calls]
    tool_calls = [
        {
            "id": f"call0000{index}",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": json.dumps({"city": city}) if as_string else {"city": city},
            },
        }
        for index, city in enumerate(cities)
    ]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 21}'}
        for call in tool_calls
    ]
    content = None if as_string else ""
    return [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": content, "tool_calls": tool_calls},
        *results,
    ]


_CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "user": ([{"role": "user", "content": "Say hello."}], None),
    "system": (
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Hi."}],
        None,
    ),
    "tools": ([{"role": "user", "content": "Weather?"}], [WEATHER_TOOL, TIME_TOOL]),
    "history": (
        [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye."},
        ],
        None,
    ),
}
# Where the real template fails and ours deliberately does not.
_REAL_FAILS = {
    # Hermes 3 ships a plain ChatML "default" template beside "tool_use"; the collection holds
    # only tool_use, which cannot render without tools. Ours renders both cases.
    ("hermes3", "user"),
    ("hermes3", "system"),
    ("hermes3", "history"),
    # Kimi-K2-0905's appends to a list, which transformers' sandbox forbids; ours does not.
    ("kimi-k2", "one_call"),
    ("kimi-k2", "two_calls"),
}


def _structure(family: Family, text: str) -> list[str]:
    """The family's added tokens in ``text``, in order: the layout a model sees. DeepSeek's
    markers count too where they are plain text (R1-Distill's vocabulary lacks them)."""
    tokens = sorted(family.added_tokens, key=len, reverse=True)
    pattern = "|".join([*(re.escape(token) for token in tokens), "<｜[^｜]+｜>"])
    return re.findall(pattern, text)


def _render(
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> str:
    text = tokenizer.apply_chat_template(
        copy.deepcopy(messages),
        tools=tools,
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(text, str)
    return text


@pytest.mark.skipif(REAL_TEMPLATES is None, reason="the real chat templates are not checked out")
@pytest.mark.parametrize("name", NAMES)
def test_template_matches_the_real_one(
    tokenizers: dict[str, PreTrainedTokenizerFast], name: str
) -> None:
    assert REAL_TEMPLATES is not None
    family, tokenizer = FAMILIES[name], tokenizers[name]
    real = (REAL_TEMPLATES / family.source).read_text("utf-8")
    ours = family.chat_template()
    conversations = dict(_CONVERSATIONS)
    conversations["one_call"] = (_round(name, 1), [WEATHER_TOOL])
    conversations["two_calls"] = (_round(name, 2), [WEATHER_TOOL])
    compared = 0
    for case, (messages, tools) in conversations.items():
        try:
            expected = _render(tokenizer, real, messages, tools)
        except Exception:  # The real template refuses this conversation.
            if (name, case) in _REAL_FAILS:
                continue
            with pytest.raises(Exception):  # noqa: B017, PT011 - any rejection will do
                _render(tokenizer, ours, messages, tools)
            continue
        assert (name, case) not in _REAL_FAILS
        got = _render(tokenizer, ours, messages, tools)
        assert _structure(family, got) == _structure(family, expected), case
        compared += 1
    assert compared >= 3


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_trained_family_model_reproduces_its_fixtures(model_cache: Path, name: str) -> None:
    # The session's shared cache (built from scratch on a clean machine), so that the e2e
    # tests of the families reuse these builds instead of training every family twice.
    family = FAMILIES[name]
    start = time.perf_counter()
    folder = cached_family_model(name, cache_dir=model_cache)
    built = time.perf_counter() - start
    assert cached_family_model(name, cache_dir=model_cache) == folder
    config = json.loads((folder / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    assert config["max_position_embeddings"] == 65536
    assert config["vocab_size"] == VOCAB_SIZE
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    assert generation["do_sample"] is False
    assert generation["eos_token_id"] == [token_id(tokenizer, t) for t in family.generation_eos]
    # Reloaded from disk: greedy decoding yields each reply and then its end token exactly,
    # one prompt at a time and in a left-padded batch, as serving code batches requests.
    verify_family_model(model, tokenizer, family)
    wanted = [
        [*tokenizer.encode(f.reply, add_special_tokens=False), token_id(tokenizer, f.end)]
        for f in family.fixtures
    ]
    assert _batched_replies(model, tokenizer, family) == wanted
    print(f"{name}: built in {built:.1f}s")


def _batched_replies(model: Any, tokenizer: Any, family: Family) -> list[list[int]]:
    prompts = [fixture_prompt_ids(tokenizer, fixture) for fixture in family.fixtures]
    stops = [token_id(tokenizer, token) for token in family.generation_eos]
    pad = stops[0] if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=256,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    replies = []
    for row in output[:, width:].tolist():
        end = next(i for i, token in enumerate(row) if token in stops)
        replies.append(row[: end + 1])
    return replies


def test_cache_keys_differ_per_family_and_build() -> None:
    keys = {family_cache_key(name) for name in NAMES}
    assert len(keys) == len(NAMES)
    assert family_cache_key("glm45", context_length=4096) != family_cache_key("glm45")
    assert family_cache_key("glm45") == family_cache_key(FAMILIES["glm45"])


@pytest.mark.slow
def test_command_line_builds_a_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "phi"
    assert main(["build", str(out), "--family", "phi4-mini", "--context-length", "2048"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 2048
    assert "<|tool|>" in (out / "chat_template.jinja").read_text()


def test_unknown_family() -> None:
    with pytest.raises(KeyError, match="unknown model family"):
        build_family_tokenizer("gpt-5")
