"""Building a family's tiny model folder, and a content-addressed cache of them.

A family's model is the tiny Qwen3 architecture of ``cortex.testing.model`` with the family's own
tokenizer (the corpus-trained BPE plus its added tokens) and chat template, trained until greedy
decoding of every fixture's prompt yields the fixture's reply and then its end token, token for
token. Prompts are rendered by the neuron (``cortex.testing.prompts``), so the model answers what
the neuron will send it. ``qwen3`` is the original tiny model: its build is ``build_model``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from cortex.errors import InvalidRequest
from cortex.testing import train
from cortex.testing.families.catalogue import family as lookup
from cortex.testing.families.spec import Family, FamilyFixture
from cortex.testing.model import (
    DEFAULT_CONTEXT_LENGTH,
    FixtureMismatchError,
    build_model,
    cache_key,
    cached_folder,
    cached_model,
    new_model,
    qwen3_config,
    save_model,
    source_digest,
    write_atomically,
)
from cortex.testing.prompts import prompt_ids
from cortex.testing.tokenizer import make_tokenizer, token_id

__all__ = [
    "FixtureRenderError",
    "build_family_model",
    "build_family_tokenizer",
    "cached_family_model",
    "family_cache_key",
    "family_examples",
    "fixture_prompt_ids",
    "verify_family_model",
]

_SEED = 0


class FixtureRenderError(ValueError):
    """The neuron's rendering of a fixture conversation failed (the template rejected it)."""


def build_family_tokenizer(
    family: Family | str, *, context_length: int = DEFAULT_CONTEXT_LENGTH
) -> PreTrainedTokenizerFast:
    """The family's tokenizer with its chat template, ready to ``save_pretrained``."""
    spec = lookup(family)
    return make_tokenizer(
        special_tokens=spec.special_tokens,
        control_tokens=spec.control_tokens,
        bos=spec.bos,
        eos=spec.eos,
        pad=spec.pad,
        unk=spec.unk,
        template=spec.chat_template(),
        context_length=context_length,
    )


def _reply_ids(
    spec: Family, tokenizer: PreTrainedTokenizerFast, fixture: FamilyFixture
) -> list[int]:
    ids: list[int] = tokenizer(fixture.reply, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids, skip_special_tokens=False) != fixture.reply:
        raise ValueError(f"{spec.name}/{fixture.name}: the reply does not survive tokenization")
    stops = {token_id(tokenizer, token) for token in spec.generation_eos}
    if stops & set(ids):
        raise ValueError(
            f"{spec.name}/{fixture.name}: the reply holds a token that ends generation"
        )
    end = token_id(tokenizer, fixture.end)
    if end not in stops:
        raise ValueError(f"{spec.name}/{fixture.name}: {fixture.end!r} does not end generation")
    return [*ids, end]


def fixture_prompt_ids(tokenizer: PreTrainedTokenizerFast, fixture: FamilyFixture) -> list[int]:
    """The ids the neuron renders for a fixture's conversation."""
    return prompt_ids(tokenizer, fixture.messages, fixture.tools, fixture.chat_template_kwargs)


def family_examples(
    family: Family | str, tokenizer: PreTrainedTokenizerFast
) -> list[train.Example]:
    """Every fixture's prompt variants (``train.prompt_variants``) with its reply.

    A variant that renders exactly like an earlier one (templates that ignore tools) is dropped;
    two fixtures whose prompts render alike but whose replies differ cannot both be learned and
    raise ``ValueError``. A conversation the template rejects raises ``FixtureRenderError``.
    """
    spec = lookup(family)
    examples: list[train.Example] = []
    owners: dict[tuple[int, ...], train.Example] = {}
    for fixture in spec.fixtures:
        reply = _reply_ids(spec, tokenizer, fixture)
        variants = train.prompt_variants(fixture.name, fixture.message_list(), fixture.tool_list())
        for exact, messages, tools in variants:
            try:
                ids = prompt_ids(tokenizer, messages, tools, fixture.chat_template_kwargs)
            except InvalidRequest as error:
                which = "" if exact else f" (variant with {len(messages)} messages)"
                raise FixtureRenderError(
                    f"{spec.name}/{fixture.name}{which}: {error.message}"
                ) from error
            earlier = owners.get(tuple(ids))
            if earlier is not None:
                if earlier.reply_ids != reply:
                    raise ValueError(
                        f"{spec.name}: fixtures {earlier.fixture!r} and {fixture.name!r} render "
                        "the same prompt but want different replies"
                    )
                continue
            example = train.Example(fixture.name, exact, ids, reply)
            owners[tuple(ids)] = example
            examples.append(example)
    return examples


def verify_family_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, family: Family | str
) -> None:
    """Raise ``FixtureMismatchError`` unless greedy decoding (``generate``) of every fixture's
    prompt yields exactly its reply and then its end token."""
    spec = lookup(family)
    eos_ids = [token_id(tokenizer, token) for token in spec.generation_eos]
    pad_id = token_id(tokenizer, spec.pad) if spec.pad is not None else eos_ids[0]
    for fixture in spec.fixtures:
        wanted = _reply_ids(spec, tokenizer, fixture)
        got = train.greedy_ids(
            model,
            fixture_prompt_ids(tokenizer, fixture),
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=len(wanted) + 8,
        )
        if got != wanted:
            raise FixtureMismatchError(
                f"{spec.name}/{fixture.name}: expected {tokenizer.decode(wanted)!r}, "
                f"got {tokenizer.decode(got)!r}"
            )


def _write_family_model(out_dir: Path, spec: Family, context_length: int) -> None:
    tokenizer = build_family_tokenizer(spec, context_length=context_length)
    tokenizer.save_pretrained(str(out_dir))
    ids = {name: token_id(tokenizer, name) for name in spec.added_tokens}
    bos = ids[spec.bos] if spec.bos is not None else None
    pad = ids[spec.pad] if spec.pad is not None else None
    config = qwen3_config(
        vocab_size=len(tokenizer),
        context_length=context_length,
        bos_token_id=bos,
        eos_token_id=ids[spec.eos],
        pad_token_id=pad,
    )
    # Greedy by default (do_sample=false), so a request that sets no temperature gets the
    # fixture replies.
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=bos,
        eos_token_id=[ids[token] for token in spec.generation_eos],
        pad_token_id=pad,
        do_sample=False,
    )
    model = new_model(config, generation)
    examples = family_examples(spec, tokenizer)
    pad_id = pad if pad is not None else ids[spec.eos]
    train.train_on_examples(model, examples, pad_id=pad_id, seed=_SEED)
    # The margin check in training implies this, but generate() is what users run.
    verify_family_model(model, tokenizer, spec)
    save_model(model, out_dir)


def build_family_model(
    out_dir: Path, family: Family | str, *, context_length: int = DEFAULT_CONTEXT_LENGTH
) -> Path:
    """Build the family's trained tiny model folder at ``out_dir`` and return its path.

    Raises ``FixtureRenderError`` when the neuron cannot render a fixture conversation for this
    template, ``train.TrainingError`` or ``FixtureMismatchError`` when the model does not learn
    the replies. ``out_dir`` must not exist or be an empty folder; the folder appears by atomic
    rename (``model.write_atomically``).
    """
    spec = lookup(family)
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    if spec.name == "qwen3":
        return build_model(Path(out_dir), trained=True, context_length=context_length)
    return write_atomically(
        Path(out_dir), lambda staging: _write_family_model(staging, spec, context_length)
    )


def family_cache_key(family: Family | str, *, context_length: int = DEFAULT_CONTEXT_LENGTH) -> str:
    """A digest of everything the family's model folder depends on: the family's tokens,
    template and fixtures, the build parameters, the builder's sources and the library versions
    (``model.source_digest``), and the training prompts as the neuron renders them today: a change
    to ``cortex.neuron.prompt`` that alters a prompt rebuilds the model, and no other change does.
    Raises ``FixtureRenderError`` where the neuron cannot render a fixture."""
    spec = lookup(family)
    if spec.name == "qwen3":
        return cache_key(trained=True, context_length=context_length)
    parts = {
        "family": dataclasses.asdict(spec),
        "context_length": context_length,
        "examples": family_examples(spec, build_family_tokenizer(spec)),
    }
    own = tuple(sorted(Path(__file__).resolve().parent.glob("*.py")))
    return source_digest(parts, spec.chat_template(), sources=own)


def cached_family_model(
    family: Family | str,
    *,
    cache_dir: Path | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> Path:
    """The family's trained model folder from the cache, built there first if missing.

    Safe across processes, like ``cached_model`` (which serves ``qwen3``). Treat the folder as
    read-only.
    """
    spec = lookup(family)
    if spec.name == "qwen3":
        return cached_model(trained=True, cache_dir=cache_dir, context_length=context_length)
    key = family_cache_key(spec, context_length=context_length)
    return cached_folder(
        cache_dir,
        f"{spec.name}-{key}",
        lambda target: build_family_model(target, spec, context_length=context_length),
    )
