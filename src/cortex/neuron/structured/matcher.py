"""Grammars compiled for one model, and the matcher each constrained sequence carries.

llguidance (``llguidance``) holds generation to a grammar: a matcher per sequence says which
tokens may come next (a bitmask over the vocabulary, one bit per token) and advances with each
token taken. It was picked over xgrammar by measurement (``bench/grammar_libs.py``; the README's
"Structured outputs" says the figures) and because its grammars match a family's marker tokens
by id and embed JSON schemas in a grammar, which the tool-call grammars need.

* ``Grammars`` belongs to one loaded model: its llguidance tokenizer (built at first use) and a
  cache of compiled grammars, so a schema sent again costs a copy, not a compile. ``compile``
  runs where ``prepare`` runs (a worker thread), never on the device's thread or the event loop.
* ``Constraint`` is one sequence's matcher. ``fill`` writes its row of a bitmask and ``accept``
  advances it; the device worker calls both (``engine.constrain``). ``forced`` closes a JSON
  answer that the length limit would cut off, so that it still parses. vLLM is given the whole
  reply's grammar (``whole``), and ``answer`` when it continues a sequence as a new request
  after a forced end of thinking.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import llguidance.hf
import torch

from cortex.errors import InvalidRequest
from cortex.neuron.structured.closing import closing

__all__ = ["Closers", "Constraint", "Grammars", "Phase", "narrow"]

Phase = Literal["reasoning", "either", "answer"]

CACHE_SIZE = 256
# How near the length limit the closing of a cut-off JSON answer is considered (tokens).
CLOSING_WINDOW = 24
# One sampled token can lengthen the closing by several (``,`` in an object owes ``"": 0``):
# closing starts while this many tokens more than it needs are left.
CLOSING_MARGIN = 8
# How near the limit an open JSON answer is steered towards its end (``Constraint.narrow``).
NARROW_WINDOW = 64


class Grammars:
    """One model's grammar compiler (see the module docstring); thread-safe."""

    def __init__(self, tokenizer: Any, eos_token_ids: Collection[int]) -> None:
        self._hf = tokenizer
        self._eos = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._reasoning: dict[int, torch.Tensor] = {}
        self._closers: Closers | None = None
        self._lock = threading.Lock()
        self.compiled = 0  # grammars compiled (not served from the cache), for tests

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=len(self._hf), eos_token=self._eos or None
                )
            return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """How many token ids a bitmask row covers."""
        return int(self.tokenizer.vocab_size)

    def reasoning_mask(self, think_end: int) -> torch.Tensor:
        """The tokens reasoning may hold ([words] int32 bits): any but a special token, and
        its end. As the whole reply's grammar on vLLM has it, so the engines agree; the end
        of the sequence is not among them: a constrained reply's answer always comes."""
        with self._lock:
            found = self._reasoning.get(think_end)
        if found is not None:
            return found
        tokenizer = self.tokenizer
        vocab = int(tokenizer.vocab_size)
        allowed = torch.tensor([not tokenizer.is_special_token(t) for t in range(vocab)])
        allowed[think_end] = True
        words = (vocab + 31) // 32
        bits = torch.zeros(words * 32, dtype=torch.int64)
        bits[:vocab] = allowed.to(torch.int64)
        packed = (bits.view(words, 32) << torch.arange(32, dtype=torch.int64)).sum(dim=1)
        mask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        with self._lock:
            self._reasoning[think_end] = mask
        return mask

    def closers(self) -> Closers:
        """The token classes that bring an open JSON value to its end (``Closers``)."""
        with self._lock:
            if self._closers is not None:
                return self._closers
        vocab = int(self.tokenizer.vocab_size)
        texts = [self._hf.decode([t], skip_special_tokens=False) for t in range(len(self._hf))]
        texts += [""] * (vocab - len(texts))

        def starting(chars: str) -> torch.Tensor:
            return torch.tensor([t.lstrip().startswith(tuple(chars)) for t in texts[:vocab]])

        found = Closers(
            quote=torch.tensor(['"' in t for t in texts[:vocab]]),
            close=starting("]}"),
            comma=starting(","),
            short=starting('"-0123456789tfn'),
            texts=tuple(texts[:vocab]),
        )
        with self._lock:
            self._closers = found
        return found

    def compile(self, grammar: str, param: str) -> llguidance.LLMatcher:
        """A matcher at the start of ``grammar``, for one sequence; an ``InvalidRequest``
        against ``param`` when the grammar does not compile (a bad schema, regex or rule)."""
        with self._lock:
            found = self._cache.get(grammar)
            if found is not None:
                self._cache.move_to_end(grammar)
                return found.deep_copy()
        tokenizer = self.tokenizer
        source = (
            grammar if grammar.startswith("{") else llguidance.LLMatcher.grammar_from_lark(grammar)
        )
        matcher = llguidance.LLMatcher(tokenizer, source, log_level=0)
        error = matcher.get_error()
        if error:
            raise InvalidRequest(f"{param} cannot be enforced: {_first_line(error)}", param=param)
        with self._lock:
            self.compiled += 1
            self._cache[grammar] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher.deep_copy()


def narrow(allowed: torch.Tensor, closers: Closers, inside: torch.Tensor) -> torch.Tensor:
    """``allowed`` (bool [R, V], what each row's grammar allows) narrowed so that an open JSON
    answer ends: inside a string (``inside``, bool [R]) the tokens that end it; outside, those
    that close a container, else end a value, else start a short one: the first class the
    grammar allows any of. What the schema still requires comes as the grammar forces it."""
    width = min(allowed.shape[1], closers.quote.shape[0])
    device = allowed.device
    head = allowed[:, :width]
    result = allowed.clone()
    result[:, width:] = False
    done = torch.zeros(allowed.shape[0], dtype=torch.bool, device=device)
    for tier in closers.tiers:
        hit = head & tier[:width].to(device)
        chosen = hit.any(dim=1) & ~done & ((tier is closers.quote) == inside)
        result[:, :width] = torch.where(chosen[:, None], hit, result[:, :width])
        done |= chosen
    return torch.where(done[:, None], result, allowed)


@dataclass(frozen=True, slots=True)
class Closers:
    """Per token id (bool [vocab]): its text holds a quote (ends a string); starts with ``]``
    or ``}`` (closes a container), with ``,`` (ends a value), or with what starts a short value
    (a string, a number, a literal) — the classes a JSON answer near its length limit is
    narrowed to, in that order (``narrow``)."""

    quote: torch.Tensor
    close: torch.Tensor
    comma: torch.Tensor
    short: torch.Tensor
    texts: tuple[str, ...] = ()  # each token's text, alone (for JSON's quotes and brackets)

    @property
    def tiers(self) -> tuple[torch.Tensor, ...]:
        """In order: inside a string the first, outside the others."""
        return (self.quote, self.close, self.comma, self.short)


def _first_line(error: str) -> str:
    """llguidance's message without the grammar it quotes; for an error that names only a
    position, the text there."""
    lines = [line for line in error.splitlines() if line.strip()]
    head = lines[0] if lines else error
    head = head.split(": ", 1)[1] if head.startswith("at ") and ": " in head else head
    if len(lines) > 1 and " | " in lines[1] and len(head) < 40:
        head += f" in: {lines[1].split(' | ', 1)[1].strip()[:120]}"
    return head


class Constraint:
    """One sequence's matcher (see the module docstring).

    Reasoning is not held to a grammar: while the sequence reasons (``phase`` ``reasoning``)
    its row only loses the special tokens and the end of the sequence (``reasoning_mask``),
    and the matcher, at the start of the answer's grammar, starts with
    the first token after the end of reasoning. In phase ``either`` the reply may open
    reasoning (a template that leaves that to the model; whitespace may come first) or be the
    answer: the ``direct`` matcher's grammar allows both, and stops at the opening."""

    __slots__ = (
        "_after", "_chars", "_closers", "_closing", "_content", "_decoded", "_direct",
        "_escape", "_inside", "_matcher", "_reasoning", "_tokenizer", "answer", "eos", "limit",
        "phase", "think_end",
        "think_start", "whole", "words",
    )  # fmt: skip

    def __init__(
        self,
        direct: llguidance.LLMatcher | None,
        after: llguidance.LLMatcher | None,
        *,
        whole: str,
        answer: str,
        phase: Phase,
        vocab_size: int,
        tokenizer: Any,
        eos: int | None,
        think: tuple[int, int] | None,
        reasoning: torch.Tensor | None = None,
        closers: Closers | None = None,
        limit: int = 1 << 30,
    ) -> None:
        # At the start of the answer when the reply starts with it (``direct``), or when it
        # follows reasoning (``after``: the template's whitespace may come first).
        self._direct, self._after = direct, after
        matcher = after if phase == "reasoning" or direct is None else direct
        if matcher is None:
            raise ValueError("a constraint needs a matcher")
        self._matcher = matcher
        self.whole = whole  # the whole reply's grammar, reasoning included (for vLLM)
        self.answer = answer  # the grammar after reasoning
        self.phase: Phase = phase if think is not None else "answer"
        self.words = (vocab_size + 31) // 32  # a bitmask row's int32 words
        self._tokenizer = tokenizer
        self.eos = eos
        self.think_start: int | None = think[0] if think is not None else None
        self.think_end: int | None = think[1] if think is not None else None
        self._reasoning = reasoning  # what reasoning may hold (``Grammars.reasoning_mask``)
        self._closers = closers
        self.limit = limit  # the request's max_tokens
        self._decoded: tuple[int, str] = (0, "")
        self._chars: list[str] = []  # the answer's tokens' texts (where closers are known)
        self._inside = self._escape = False
        self._content: list[int] = []  # the answer's ids so far
        self._closing: list[int] = []  # what closes the JSON, being taken

    @property
    def matcher(self) -> llguidance.LLMatcher | None:
        """The matcher that says what may come next; None while reasoning (``fill`` then
        writes the reasoning mask)."""
        return None if self.phase == "reasoning" else self._matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]`` (int32, on the CPU)."""
        view = bitmask[row]
        if self.phase == "reasoning":
            if self._reasoning is None:
                view.fill_(-1)
            else:
                view.copy_(self._reasoning[: view.numel()])
            return
        self._matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())

    def accept(self, token: int) -> str | None:
        """Advance past ``token``; why it does not fit, else None."""
        if self.phase == "either" and token == self.think_start:
            self.phase = "reasoning"  # the direct matcher's grammar ends at the opening
            return None
        if self.phase == "reasoning":
            if token == self.think_end:
                self.phase = "answer"
                if self._after is not None:
                    self._matcher = self._after
            return None
        if self._closing and token == self._closing[0]:
            self._closing.pop(0)
        self._content.append(token)
        if self._closers is not None and token < len(self._closers.texts):
            self._read(self._closers.texts[token])
        if self._matcher.consume_token(token):
            return None
        return self._matcher.get_error() or f"token {token} does not fit the grammar"

    def _near(self, room: int, window: int) -> bool:
        """Whether an answer still open is ``window`` tokens or less from the length limit
        (a quarter of ``max_tokens`` at most, so a short request is not hurried from its
        start)."""
        if room > min(window, max(self.limit // 4, 4)) or self.phase == "reasoning":
            return False
        return bool(self._content) and not self._matcher.is_stopped()

    def _read(self, text: str) -> None:
        """Follow the answer's text: whether it is inside a JSON string (outside strings JSON
        has no quotes or backslashes, so unescaped quotes say so)."""
        self._chars.append(text)
        if '"' not in text and "\\" not in text and not self._escape:
            return
        for char in text:
            if self._escape:
                self._escape = False
            elif char == "\\" and self._inside:
                self._escape = True
            elif char == '"':
                self._inside = not self._inside

    def _text(self) -> str:
        """The answer's text so far, token by token (a character split across tokens reads
        as U+FFFD: JSON's structure is ASCII)."""
        if self._decoded[0] != len(self._chars):
            self._decoded = (len(self._chars), "".join(self._chars))
        return self._decoded[1]

    def narrowing(self, room: int) -> tuple[Closers, bool] | None:
        """How the next token is narrowed near the length limit so that an open JSON answer
        ends (``narrow``): the model's token classes and whether the answer is inside a
        string; None: it is not."""
        closers = self._closers
        if closers is None or self._closing or not self._near(room, NARROW_WINDOW):
            return None
        return closers, self._inside

    def forced(self, room: int) -> int | None:
        """The token to take now so that JSON cut off by the length limit still parses: once
        ``room`` (the tokens left) is about what closing it takes, the closing (``closing``)
        and the end of the sequence are taken, where the grammar accepts them; else None."""
        if self._closing:
            return self._closing[0]
        if not self._near(room, CLOSING_WINDOW):
            return None
        suffix = closing(self._text())
        if not suffix:
            return None  # not JSON, or whole (the grammar allows only the end now)
        tokens = list(self._tokenizer.encode(suffix, add_special_tokens=False))
        if len(tokens) + CLOSING_MARGIN < room or self._matcher.validate_tokens(tokens) != len(
            tokens
        ):
            return None
        self._closing = tokens + ([self.eos] if self.eos is not None else [])
        return self._closing[0]
