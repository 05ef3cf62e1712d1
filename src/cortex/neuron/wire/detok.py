"""Incremental detokenization that never splits a UTF-8 character.

Byte-level tokenizers emit characters spread over several tokens (emoji, CJK, byte
fallback). ``IncrementalDecoder`` releases text only once it decodes cleanly, and on
``flush`` releases whatever the tokenizer makes of the rest, so the joined deltas
always equal ``decode(all ids)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

REPLACEMENT = "\ufffd"


class Decodes(Protocol):
    """The part of a tokenizer the decoder needs."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    Keeps a small window: text is decoded from ``prefix_offset`` so that tokenizers
    whose decoding depends on the previous token (leading spaces) decode correctly.
    """

    __slots__ = ("_emitted", "_ids", "_prefix_offset", "_read_offset", "_skip", "_tokenizer")

    def __init__(self, tokenizer: Decodes, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = fast_decoder(tokenizer)
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._emitted: list[str] = []

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became complete (often "")."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._emitted.append(delta)
            return delta
        return ""

    def flush(self) -> str:
        """Release what is still pending, as the tokenizer decodes it."""
        if self._read_offset == len(self._ids):
            return ""
        full = self._decode(self._ids)
        emitted = "".join(self._emitted)
        tail = full[len(emitted) :] if full.startswith(emitted) else ""
        self._read_offset = len(self._ids)
        self._emitted = [full] if tail else self._emitted
        return tail

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)


class _Backend:
    """The Rust tokenizer under a transformers one, called directly: the wrapper's
    ``decode`` costs several times the decoding itself, twice per generated token."""

    __slots__ = ("_decode",)

    def __init__(self, backend: Any) -> None:
        self._decode = backend.decode

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._decode(list(token_ids), skip_special_tokens=skip_special_tokens))


def fast_decoder(tokenizer: Decodes) -> Decodes:
    """``tokenizer`` itself, or its backend when decoding through it gives the same text
    (no clean-up of spaces, which only the wrapper does)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return _Backend(backend)
