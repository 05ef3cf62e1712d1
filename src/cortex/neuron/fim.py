"""Fill-in-the-middle: which FIM tokens a model has, found in its vocabulary (never by its
name), and the prompt a completion with a ``suffix`` becomes in them.

Known token sets, each a prefix, a suffix and a middle marker:

* ``<|fim_prefix|>`` ``<|fim_suffix|>`` ``<|fim_middle|>`` (Qwen2.5-Coder, CodeGemma) and
  StarCoder's ``<fim_prefix>`` ``<fim_suffix>`` ``<fim_middle>``:
  ``<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>``;
* DeepSeek-Coder's ``<｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>``;
* CodeLlama's ``▁<PRE>`` ``▁<SUF>`` ``▁<MID>`` (or the same without the ``▁``):
  `` <PRE> {prompt} <SUF>{suffix} <MID>``, built as Meta's reference code and transformers'
  CodeLlama tokenizer build it: the marker ids, the prompt encoded with one space before it,
  the suffix with none (the spaces before ``<SUF>`` and ``<MID>`` are the markers' own ``▁``).

Every layout starts with the model's BOS where its tokenizer puts one before a text. The
prompt and the suffix are encoded on their own, between the marker ids, exactly as written:
a SentencePiece tokenizer's implicit leading space (its "dummy prefix") is not added to them.
A model ends an infill with its end-of-sequence token, or with the set's own end token
(``ends``, CodeLlama's ``<EOT>``), which then ends generation too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Layout = Literal["psm", "codellama"]

# (layout, (prefix, suffix, middle), tokens that end an infill), in the order tried.
_SETS: tuple[tuple[Layout, tuple[str, str, str], tuple[str, ...]], ...] = (
    ("psm", ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<|endoftext|>",)),
    ("psm", ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|endoftext|>",)),
    ("psm", ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), ("<｜end▁of▁sentence｜>",)),
    ("codellama", ("▁<PRE>", "▁<SUF>", "▁<MID>"), ("▁<EOT>",)),
    ("codellama", ("<PRE>", "<SUF>", "<MID>"), ("<EOT>",)),
)

# Encoded before a text and cut off again, so that a SentencePiece tokenizer's dummy prefix
# lands on it rather than on the text (Meta's CodeLlama code does the same with this one).
_SENTINEL = "☺"


@dataclass(frozen=True, slots=True)
class FimTokens:
    """A model's fill-in-the-middle markers (token ids) and how a prompt is laid out in them."""

    layout: Layout
    prefix: int
    suffix: int
    middle: int
    names: tuple[str, str, str]
    ends: frozenset[int] = frozenset()


def detect(tokenizer: Any) -> FimTokens | None:
    """The first known FIM token set whose three markers are single tokens of ``tokenizer``."""
    for layout, names, ends in _SETS:
        ids = [single_id(tokenizer, name) for name in names]
        if None in ids:
            continue
        prefix, suffix, middle = (i for i in ids if i is not None)
        found = (single_id(tokenizer, name) for name in ends)
        return FimTokens(
            layout, prefix, suffix, middle, names, frozenset(i for i in found if i is not None)
        )
    return None


def known_markers() -> str:
    """The prefix markers looked for, for an error message."""
    return ", ".join(names[0] for _, names, _ in _SETS)


def fim_prompt_ids(tokenizer: Any, fim: FimTokens, prompt: str, suffix: str) -> list[int]:
    """The prompt ids of filling in between ``prompt`` and ``suffix``."""
    before = (" " + prompt) if fim.layout == "codellama" else prompt
    return [
        *bos_ids(tokenizer),
        fim.prefix,
        *encode_bare(tokenizer, before),
        fim.suffix,
        *encode_bare(tokenizer, suffix),
        fim.middle,
    ]


def text_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A plain completion's prompt ids: BOS where the tokenizer adds one, then the text as
    the tokenizer encodes a text (no end-of-sequence token after it)."""
    return [*bos_ids(tokenizer), *tokenizer.encode(prompt, add_special_tokens=False)]


def bos_ids(tokenizer: Any) -> list[int]:
    """``[BOS]`` where ``tokenizer`` puts its BOS before a text it encodes, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer.encode("a", add_special_tokens=True)
    return [bos] if ids and ids[0] == bos else []


def encode_bare(tokenizer: Any, text: str) -> list[int]:
    """``text``'s ids, with no space of the tokenizer's own before it."""
    if not text:
        return []

    def encode(part: str) -> list[int]:
        return list(tokenizer.encode(part, add_special_tokens=False))

    if not _adds_space(tokenizer):
        return encode(text)
    if text.startswith(" "):
        return encode(text[1:])  # the tokenizer's own space is this one
    head = encode(_SENTINEL)
    ids = encode(_SENTINEL + text)
    return ids[len(head) :] if ids[: len(head)] == head else encode(text)


def _adds_space(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts a space before every text (SentencePiece's dummy prefix,
    a byte-level BPE's ``add_prefix_space``)."""
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False)[:1])
    return bool(first) and isinstance(first[0], str) and first[0][:1] in ("▁", "Ġ")


def single_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` if it is one token of the vocabulary, else None.

    Looked up in the vocabulary, not encoded and decoded back (``formats.single_token``):
    CodeLlama's ``▁<PRE>`` decodes as ``<PRE>``, its ``▁`` read as a space and stripped."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or isinstance(found, bool):
        return None
    if found == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None
    return found
