"""The tiny test models' tokenizer: a byte-level BPE trained on the embedded corpus.

This module owns the tokenizer: training it from ``corpus.txt`` (deterministically, so every
machine builds byte-identical files), the ChatML added tokens in the Qwen3 layout, the chat
template from ``chat_template.jinja``, and wrapping it all as a transformers tokenizer.
``make_tokenizer`` does the same for any set of added tokens and chat template; the model
families in ``cortex.testing.families`` use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CONTROL_TOKENS",
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "build_tokenizer",
    "chat_template",
    "corpus_text",
    "make_tokenizer",
    "save_tokenizer",
    "token_id",
    "train_backend",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Special tokens are skipped by ``decode(..., skip_special_tokens=True)``.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Qwen3 registers these as added but *non-special* tokens, so decoding with
# skip_special_tokens=True keeps them and reasoning/tool-call parsers can see them.
CONTROL_TOKENS = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)

# Total vocabulary, including the added tokens, which take the last ids as in Qwen3.
VOCAB_SIZE = 1024

_PACKAGE = "cortex.testing"


def corpus_text() -> str:
    """The embedded tokenizer training corpus."""
    return resources.files(_PACKAGE).joinpath("corpus.txt").read_text(encoding="utf-8")


def chat_template() -> str:
    """The ChatML chat template shipped with the tiny models."""
    return resources.files(_PACKAGE).joinpath("chat_template.jinja").read_text(encoding="utf-8")


def train_backend(
    special_tokens: Sequence[str] = SPECIAL_TOKENS, control_tokens: Sequence[str] = CONTROL_TOKENS
) -> Tokenizer:
    """Train the byte-level BPE and register the added tokens.

    ``special_tokens`` are registered as special (skipped by ``skip_special_tokens=True``),
    ``control_tokens`` as added but not special; together with the BPE vocabulary they make
    ``VOCAB_SIZE`` tokens, the added ones taking the last ids in that order. The tokenizers BPE
    trainer breaks count ties by pair order, so the result does not depend on thread scheduling;
    ``tests/testing`` checks that two builds are byte-identical.
    """
    added = [*special_tokens, *control_tokens]
    if len(set(added)) != len(added):
        raise ValueError(f"added tokens repeat: {added}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(added),
        # Every byte gets a token, so any UTF-8 text (emoji, CJK) round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # Paragraphs are the training "sentences"; a list keeps their order fixed.
    backend.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in special_tokens]
    )
    backend.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token in control_tokens]
    )
    if backend.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"the tokenizer has {backend.get_vocab_size()} tokens, not {VOCAB_SIZE}")
    return backend


def make_tokenizer(
    *,
    special_tokens: Sequence[str],
    control_tokens: Sequence[str],
    bos: str | None,
    eos: str,
    pad: str | None,
    unk: str | None = None,
    template: str,
    context_length: int = 65536,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer with these added tokens and wrap it with ``template`` as its chat template.

    ``bos``, ``eos``, ``pad`` and ``unk`` name the tokenizer's special-token roles (each must be one
    of ``special_tokens``, or None where the family has no such token).
    """
    for role in (bos, eos, pad, unk):
        if role is not None and role not in special_tokens:
            raise ValueError(f"{role!r} is not one of the special tokens")
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=train_backend(special_tokens, control_tokens),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        clean_up_tokenization_spaces=False,
        model_max_length=context_length,
        chat_template=template,
    )


def build_tokenizer(*, context_length: int = 65536) -> PreTrainedTokenizerFast:
    """Train the tokenizer and wrap it as a transformers tokenizer with the chat template.

    Save it with ``save_pretrained``; transformers 5 writes ``tokenizer.json``,
    ``tokenizer_config.json`` (class ``TokenizersBackend``) and ``chat_template.jinja``.
    """
    return make_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        control_tokens=CONTROL_TOKENS,
        # Qwen3 has no BOS token: prompts start directly with <|im_start|>.
        bos=None,
        eos=IM_END,
        pad=ENDOFTEXT,
        template=chat_template(),
        context_length=context_length,
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of a single token that must be in the vocabulary."""
    found = tokenizer.convert_tokens_to_ids(token)
    unknown = found == tokenizer.unk_token_id and token != tokenizer.unk_token
    if not isinstance(found, int) or unknown:
        raise KeyError(f"{token!r} is not a token of this tokenizer")
    return found


def save_tokenizer(out_dir: Path, *, context_length: int = 65536) -> PreTrainedTokenizerFast:
    """Build the tokenizer, save it into ``out_dir`` and return it."""
    tokenizer = build_tokenizer(context_length=context_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
