"""A tiny Qwen3 model that fills in the middle: the fixture of ``/v1/completions``.

Its tokenizer is the tiny models' BPE with Qwen2.5-Coder's FIM tokens (``<|fim_prefix|>``,
``<|fim_suffix|>``, ``<|fim_middle|>``) as single added tokens and ``<|endoftext|>`` as its
end of sequence, as in a Qwen2.5-Coder base model. It is trained until greedy decoding of
every ``FIM_FIXTURES`` prompt, laid out as the neuron lays it out (``cortex.neuron.fim``),
yields the fixture's completion and then ``<|endoftext|>``, token for token: one fills a
fixed middle between a prefix and a suffix, the others continue plain prompts.

``cached_fim_model()`` returns its folder from the content-addressed cache of
``cortex.testing.model``, building it once (seconds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerFast

from cortex.neuron import fim
from cortex.testing import train
from cortex.testing.model import (
    DEFAULT_CONTEXT_LENGTH,
    FixtureMismatchError,
    cached_folder,
    new_model,
    qwen3_config,
    save_model,
    source_digest,
    write_atomically,
)
from cortex.testing.tokenizer import (
    CONTROL_TOKENS,
    ENDOFTEXT,
    SPECIAL_TOKENS,
    chat_template,
    make_tokenizer,
    token_id,
)

__all__ = [
    "FIM_FIXTURES",
    "FIM_MIDDLE",
    "FIM_PREFIX",
    "FIM_SUFFIX",
    "FimFixture",
    "build_fim_model",
    "build_fim_tokenizer",
    "cached_fim_model",
    "fim_examples",
]

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"


@dataclasses.dataclass(frozen=True)
class FimFixture:
    """A prompt (with a ``suffix`` to fill in before, or None) and what greedy decoding writes
    after it before ``<|endoftext|>``."""

    name: str
    prompt: str
    suffix: str | None
    completion: str


FIM_FIXTURES = (
    FimFixture("fill", "def add(a, b):\n    ", "\n    return c", "c = a + b"),
    FimFixture("fox", "The quick brown fox", None, " jumps over the lazy dog."),
    FimFixture("story", "Once upon a time", None, " there was a tiny model."),
)


def build_fim_tokenizer(*, context_length: int = DEFAULT_CONTEXT_LENGTH) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with the FIM tokens; ``<|endoftext|>`` ends a sequence."""
    return make_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        # Added but not special, as in Qwen2.5-Coder.
        control_tokens=(*CONTROL_TOKENS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE),
        bos=None,
        eos=ENDOFTEXT,
        pad=ENDOFTEXT,
        template=chat_template(),
        context_length=context_length,
    )


def fim_examples(tokenizer: PreTrainedTokenizerFast) -> list[train.Example]:
    """Each fixture's prompt ids, as the neuron makes them, with its completion's ids."""
    layout = fim.detect(tokenizer)
    if layout is None:
        raise ValueError("the FIM tokenizer has no FIM tokens")
    end = token_id(tokenizer, ENDOFTEXT)
    examples = []
    for fixture in FIM_FIXTURES:
        if fixture.suffix is None:
            ids = fim.text_prompt_ids(tokenizer, fixture.prompt)
        else:
            ids = fim.fim_prompt_ids(tokenizer, layout, fixture.prompt, fixture.suffix)
        reply: list[int] = tokenizer(fixture.completion, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(reply) != fixture.completion:
            raise ValueError(f"{fixture.name}: the completion does not survive tokenization")
        examples.append(train.Example(fixture.name, True, ids, [*reply, end]))
    return examples


def _write(out_dir: Path, context_length: int, head_dim: int) -> None:
    tokenizer = build_fim_tokenizer(context_length=context_length)
    tokenizer.save_pretrained(str(out_dir))
    end = token_id(tokenizer, ENDOFTEXT)
    config = qwen3_config(
        vocab_size=len(tokenizer),
        context_length=context_length,
        bos_token_id=None,
        eos_token_id=end,
        pad_token_id=end,
        head_dim=head_dim,
    )
    # Greedy by default, so a request that sets no temperature gets the fixtures.
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[end], pad_token_id=end, do_sample=False
    )
    model = new_model(config, generation)
    examples = fim_examples(tokenizer)
    train.train_on_examples(model, examples, pad_id=end)
    for example in examples:  # the margin check implies this, but generate() is what runs
        got = train.greedy_ids(
            model,
            example.prompt_ids,
            eos_ids=[end],
            pad_id=end,
            max_new_tokens=len(example.reply_ids) + 8,
        )
        if got != example.reply_ids:
            raise FixtureMismatchError(
                f"fim/{example.fixture}: expected {tokenizer.decode(example.reply_ids)!r}, "
                f"got {tokenizer.decode(got)!r}"
            )
    save_model(model, out_dir)


def build_fim_model(
    out_dir: Path, *, context_length: int = DEFAULT_CONTEXT_LENGTH, head_dim: int = 16
) -> Path:
    """Build the trained FIM model folder at ``out_dir`` (atomically) and return its path."""
    return write_atomically(
        Path(out_dir), lambda staging: _write(staging, context_length, head_dim)
    )


def cached_fim_model(
    *,
    cache_dir: Path | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    head_dim: int = 16,
) -> Path:
    """The FIM model's folder from the cache, built there first if missing (read-only).

    Keyed on the fixtures, the build parameters, the training prompts as the neuron lays
    them out today, this module's and ``cortex.testing``'s sources and the libraries."""
    parts = {
        "fixtures": [dataclasses.asdict(f) for f in FIM_FIXTURES],
        "context_length": context_length,
        "head_dim": head_dim,
        "examples": fim_examples(build_fim_tokenizer(context_length=context_length)),
    }
    key = source_digest(parts, chat_template(), sources=(Path(__file__).resolve(),))
    return cached_folder(
        cache_dir,
        f"fim-{key}",
        lambda target: build_fim_model(target, context_length=context_length, head_dim=head_dim),
    )
