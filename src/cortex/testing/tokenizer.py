"""The tiny test models' tokenizer: a byte-level BPE trained on the embedded corpus.

This module owns the tokenizer: training it from ``corpus.txt`` (deterministically, so every
machine builds byte-identical files), the ChatML added tokens in the Qwen3 layout, the chat
template from ``chat_template.jinja``, and wrapping it all as a transformers tokenizer.
"""

from __future__ import annotations

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


def train_backend() -> Tokenizer:
    """Train the byte-level BPE and register the added tokens.

    The tokenizers BPE trainer breaks count ties by pair order, so the result does not depend on
    thread scheduling; ``tests/testing`` checks that two builds are byte-identical.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(CONTROL_TOKENS),
        # Every byte gets a token, so any UTF-8 text (emoji, CJK) round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # Paragraphs are the training "sentences"; a list keeps their order fixed.
    backend.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    backend.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token in CONTROL_TOKENS]
    )
    return backend


def build_tokenizer(*, context_length: int = 65536) -> PreTrainedTokenizerFast:
    """Train the tokenizer and wrap it as a transformers tokenizer with the chat template.

    Save it with ``save_pretrained``; transformers 5 writes ``tokenizer.json``,
    ``tokenizer_config.json`` (class ``TokenizersBackend``) and ``chat_template.jinja``.
    """
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=train_backend(),
        # Qwen3 has no BOS token: prompts start directly with <|im_start|>.
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
        model_max_length=context_length,
        chat_template=chat_template(),
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of a single token that must be in the vocabulary."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise KeyError(f"{token!r} is not a token of this tokenizer")
    return found


def save_tokenizer(out_dir: Path, *, context_length: int = 65536) -> PreTrainedTokenizerFast:
    """Build the tokenizer, save it into ``out_dir`` and return it."""
    tokenizer = build_tokenizer(context_length=context_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
