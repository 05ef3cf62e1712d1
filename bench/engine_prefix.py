"""``bench/engine.py --prefix``: time to first token of an agent's second turn, with the
neuron's prefix cache against without it, and the long prompts ``--mixed`` shares.

The conversation: a long system prompt (an agent's rules) and a first user message (a build
log to read), both seeded pseudo-words in sentences and paragraphs so that tokens do not
repeat trivially, sized with the model's tokenizer and chat template to ``--prefix-tokens``
(12,000 ± 500). Turn 1 sends it (non-streaming, ``max_tokens`` 8, ``temperature`` 0,
``ignore_eos``). Turn 2 is the same messages, the assistant's reply to turn 1 and a new user
message of about ``--prefix-new-tokens`` (100) tokens; it is sent ``--prefix-rounds`` (3)
times, each with a different new message (seeded, the same in both runs), so each round's
prompt shares the ~12k tokens of turn 1 and adds about a hundred of its own.

What is timed: a turn-2 request streams with ``max_tokens=1`` and ``ignore_eos``; its TTFT is
the time from sending to the first chunk after the role chunk (the one that carries the token
or, where the neuron holds back whitespace, as the random models' newlines are, the finish
chunk right behind it): the prefill of what the cache did not hold, one sampled token and the
stream's end. The role chunk is left out because the neuron sends it before any prefill.

Two neurons, one after the other, each started afresh: the default (prefix caching on) and
one with ``--no-prefix-caching``, where every round recomputes the whole prompt. The line
gives both medians and their ratio (goal: at most 0.10), then the prefix-cache counters of
each neuron's ``GET /metrics`` where it has them. A neuron that does not know
``--no-prefix-caching`` is reported as such (the cached figure is still printed), and one that
takes the option but still counts prefix-cache hits gets a warning that its figure is no
recomputation.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine_neuron import (
    MODEL_ID,
    BenchError,
    NeuronProcess,
    OptionRefused,
    Suite,
    progress,
    prometheus_values,
)

LONG_TOKENS = 12_000
LONG_TOLERANCE = 500
NEW_TOKENS = 100
PREFIX_ROUNDS = 3
TURN1_TOKENS = 8
PREFIX_GOAL = 0.10
PREFIX_SEED = 1
NO_PREFIX_CACHING = "--no-prefix-caching"
PREFIX_METRICS = (
    "cortex_neuron_prefix_cache_hit_tokens_total",
    "cortex_neuron_prefix_cache_queried_tokens_total",
    "cortex_neuron_prefill_tokens_total",
)


@dataclass(frozen=True, slots=True)
class ModeOptions:
    """How ``--prefix`` and ``--mixed`` measure."""

    long_tokens: int  # the long prompt's size (both modes)
    new_tokens: int  # turn 2's new user message
    rounds: int  # turn-2 measurements per neuron
    short: int  # --mixed: short prompts beside the long one
    mixed_tokens: int  # --mixed: tokens each sequence generates
    threads: int  # the peers'
    neuron_threads: int | None
    timeout: float


# --- text: seeded pseudo-words ----------------------------------------------------------

_ONSETS = (
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
    "br", "ch", "cl", "dr", "fl", "gr", "kr", "pl", "sh", "st", "th", "tr",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou", "io")
_CODAS = ("", "", "", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "rk", "st", "x")
_WORDS = (
    "the", "a", "of", "to", "in", "and", "is", "for", "on", "with", "that", "file", "test",
    "build", "error", "function", "module", "value", "cache", "request", "line", "step",
    "config", "path", "user", "model", "token", "return", "check", "run", "write", "read",
)  # fmt: skip
SYSTEM_HEAD = (
    "You are an autonomous coding agent working in a large repository. Follow every rule "
    "below exactly; they are listed in order of importance.\n\n"
)
USER_HEAD = "Here is the log of the failing build, then my notes on it:\n\n"
USER_TAIL = "\n\nWhat went wrong, and what should I change first?"


def _word(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(_WORDS)
    if rng.random() < 0.04:
        return str(rng.randrange(10_000))
    syllables = rng.choice((1, 2, 2, 3, 3, 4))
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    )


def pieces(seed: int, count: int) -> list[str]:
    """``count`` words with their punctuation: sentences of 5 to 16 words, paragraphs of 2 to
    6 sentences (a piece that ends one ends in a blank line)."""
    rng = random.Random(seed)
    out: list[str] = []
    sentence_left, paragraph_left = 0, rng.randint(2, 6)
    for _ in range(count):
        word = _word(rng)
        if sentence_left == 0:
            sentence_left = rng.randint(5, 16)
            word = word[:1].upper() + word[1:]
        sentence_left -= 1
        if sentence_left == 0:
            word += rng.choice(".....?!:")
            paragraph_left -= 1
            if paragraph_left == 0:
                word += "\n\n"
                paragraph_left = rng.randint(2, 6)
        elif rng.random() < 0.08:
            word += ","
        out.append(word)
    return out


def prose(words: list[str]) -> str:
    text = ""
    for word in words:
        text += word if not text or text.endswith("\n") else " " + word
    return text.strip()


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> int:
    """The size of ``messages`` rendered with the model's chat template, ready to generate."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _fit(count: Any, target: int, tolerance: int, what: str) -> Any:
    """The output of ``count(n)`` → (tokens, value) for the n of words nearest ``target``."""
    n = max(1, target // 4)
    best: tuple[int, Any] | None = None
    for _ in range(16):
        tokens, value = count(n)
        if best is None or abs(tokens - target) < abs(best[0] - target):
            best = (tokens, value)
        if abs(tokens - target) <= max(1, tolerance // 10):
            break
        n = max(1, round(n * target / max(tokens, 1)))
    assert best is not None
    if abs(best[0] - target) > tolerance:
        raise BenchError(f"could not size {what} to {target} ± {tolerance} tokens: {best[0]}")
    return best[1]


def agent_conversation(
    tokenizer: PreTrainedTokenizerBase, target: int, seed: int
) -> list[dict[str, str]]:
    """System prompt and first user message, ``target`` ± ``LONG_TOLERANCE`` tokens in all
    as the chat template renders them (two thirds of the words in the system prompt)."""
    words = pieces(seed, target)  # more words than the prompt needs: a word is ≥ 1 token
    user_words = pieces(seed + 10_000, target)

    def count(n: int) -> tuple[int, list[dict[str, str]]]:
        system = SYSTEM_HEAD + prose(words[: 2 * n // 3])
        user = USER_HEAD + prose(user_words[: n - 2 * n // 3]) + USER_TAIL
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return prompt_tokens(tokenizer, messages), messages

    tolerance = min(LONG_TOLERANCE, max(target // 20, 20))
    conversation: list[dict[str, str]] = _fit(count, target, tolerance, "the long prompt")
    return conversation


def new_message(tokenizer: PreTrainedTokenizerBase, target: int, seed: int) -> str:
    """A user message of about ``target`` tokens (its text alone)."""
    words = pieces(seed, max(target, 8))

    def count(n: int) -> tuple[int, str]:
        text = prose(words[:n])
        return len(tokenizer(text, add_special_tokens=False).input_ids), text

    message: str = _fit(count, target, max(target // 5, 5), "the new message")
    return message


def load_tokenizer(model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model)


# --- one neuron's turns ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRun:
    turn1_seconds: float
    turn1_tokens: int  # as the neuron counted them
    ttfts: list[float]
    turn2_tokens: list[int]
    counters: dict[str, float]  # PREFIX_METRICS found in GET /metrics after the rounds


async def _turn1(client: AsyncOpenAI, messages: list[dict[str, str]]) -> tuple[str, int]:
    reply = await client.chat.completions.create(
        model=MODEL_ID,
        messages=cast(Any, messages),
        max_tokens=TURN1_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    if reply.usage is None or not reply.choices:
        raise BenchError("turn 1: the reply has no usage or no choice")
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


async def _ttft(client: AsyncOpenAI, messages: list[dict[str, str]]) -> tuple[float, int]:
    """(seconds to the first chunk after the role chunk, prompt tokens) of a 1-token stream."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    first: float | None = None
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=cast(Any, messages),
        max_tokens=1,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async with stream:
        async for chunk in stream:
            if first is None and any(c.delta.content or c.finish_reason for c in chunk.choices):
                first = loop.time()
            if chunk.usage is not None:
                usage = chunk.usage
    if first is None or usage is None:
        raise BenchError("turn 2: the stream ended without a token or without usage")
    if usage.completion_tokens != 1:
        raise BenchError(f"turn 2: {usage.completion_tokens} tokens generated, not 1")
    return first - sent, usage.prompt_tokens


async def _prefix_run(
    url: str, turn1: list[dict[str, str]], news: list[str], timeout: float
) -> PrefixRun:
    async with AsyncOpenAI(
        base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=timeout
    ) as client:
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply, turn1_tokens = await _turn1(client, turn1)
            turn1_seconds = loop.time() - started
            ttfts, turn2_tokens = [], []
            for number, new in enumerate(news, 1):
                turn2 = [
                    *turn1,
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": new},
                ]
                seconds, tokens = await _ttft(client, turn2)
                progress(f"turn 2, round {number}: {seconds:.3f} s ({tokens:,} prompt tokens)")
                ttfts.append(seconds)
                turn2_tokens.append(tokens)
        except openai.APIError as exc:
            raise BenchError(f"--prefix: {type(exc).__name__}: {exc}") from exc
    async with httpx.AsyncClient(timeout=timeout) as http:
        response = await http.get(f"{url}/metrics")
    counters = prometheus_values(response.text, PREFIX_METRICS) if response.is_success else {}
    return PrefixRun(turn1_seconds, turn1_tokens, ttfts, turn2_tokens, counters)


# --- the mode --------------------------------------------------------------------------


def run_prefix(suite: Suite, options: ModeOptions) -> None:
    tokenizer = load_tokenizer(suite.model)
    turn1 = agent_conversation(tokenizer, options.long_tokens, PREFIX_SEED)
    news = [
        new_message(tokenizer, options.new_tokens, PREFIX_SEED + 100 + r)
        for r in range(options.rounds)
    ]
    progress(
        f"--prefix: a {prompt_tokens(tokenizer, turn1):,}-token turn 1 (local count), "
        f"{options.rounds} turn-2 rounds"
    )
    runs: dict[bool, PrefixRun | str] = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-prefix-") as tmp:
        for caching in (True, False):
            name = "cached" if caching else "uncached"
            progress(f"starting the neuron ({name})")
            neuron = NeuronProcess(
                suite.model,
                threads=options.neuron_threads,
                dtype=suite.dtype,
                cuda=suite.device.type == "cuda",
                log=Path(tmp) / f"neuron-{name}.log",
                timeout=options.timeout,
                extra=[] if caching else [NO_PREFIX_CACHING],
            )
            try:
                with neuron:
                    runs[caching] = asyncio.run(
                        _prefix_run(neuron.url, turn1, news, options.timeout)
                    )
            except OptionRefused as exc:
                runs[caching] = str(exc)
    for line in prefix_lines(runs):
        print(line, flush=True)


def prefix_lines(runs: dict[bool, PrefixRun | str]) -> list[str]:
    cached, uncached = runs[True], runs[False]
    assert isinstance(cached, PrefixRun)  # only the uncached neuron takes an extra option
    new = statistics.median(t - cached.turn1_tokens for t in cached.turn2_tokens)
    ours = statistics.median(cached.ttfts)
    head = f"prefix TTFT turn 2 ({cached.turn1_tokens:,}-token prompt, +{new:,.0f} new)"
    if isinstance(uncached, str):
        lines = [f"{head}: cached {ours:.3f} s; uncached n/a: {uncached}"]
    else:
        peer = statistics.median(uncached.ttfts)
        lines = [
            f"{head}: cached {ours:.3f} s vs uncached {peer:.3f} s, "
            f"ratio {ours / peer:.3f} (goal <= {PREFIX_GOAL:.2f})"
        ]
    rounds = f"turn 2 rounds: cached {_seconds(cached.ttfts)}"
    if isinstance(uncached, PrefixRun):
        rounds += f", uncached {_seconds(uncached.ttfts)}"
        if uncached.turn2_tokens != cached.turn2_tokens:
            rounds += (
                f" (prompt tokens differ: cached {cached.turn2_tokens}, "
                f"uncached {uncached.turn2_tokens})"
            )
    rounds += f"; turn 1 took {cached.turn1_seconds:.2f} s (cached neuron)"
    if isinstance(uncached, PrefixRun):
        rounds += f", {uncached.turn1_seconds:.2f} s (uncached)"
    lines.append(f"note: {rounds}")
    for caching, run in runs.items():
        if isinstance(run, PrefixRun):
            lines.append(_counters_line("cached" if caching else "uncached", run.counters))
    leaked = uncached.counters.get(PREFIX_METRICS[0], 0) if isinstance(uncached, PrefixRun) else 0
    if leaked:
        lines.append(
            f"warning: the neuron started with {NO_PREFIX_CACHING} found {leaked:,.0f} prompt "
            "tokens in its prefix cache: it did not turn the cache off, so the uncached "
            "figure above is not a recomputation and the ratio means nothing"
        )
    return lines


def _seconds(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values) + " s"


def _counters_line(name: str, counters: dict[str, float]) -> str:
    hit, queried, prefilled = (counters.get(metric) for metric in PREFIX_METRICS)
    if hit is None and queried is None and prefilled is None:
        return (
            f"prefix cache ({name} neuron): n/a, its /metrics has none of "
            f"{', '.join(PREFIX_METRICS)} (no prefix cache in this neuron yet)"
        )
    parts = []
    if hit is not None and queried is not None:
        share = f" ({hit / queried:.1%})" if queried else ""
        parts.append(f"{hit:,.0f} of {queried:,.0f} queried prompt tokens hit{share}")
    else:
        parts += [f"hit {hit:,.0f}" if hit is not None else "hit n/a"]
        parts += [f"queried {queried:,.0f}" if queried is not None else "queried n/a"]
    parts.append(f"{prefilled:,.0f} prompt tokens prefilled" if prefilled is not None else "")
    return f"prefix cache ({name} neuron, since start): " + ", ".join(p for p in parts if p)
