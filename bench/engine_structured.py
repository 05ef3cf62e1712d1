"""``bench/engine.py --structured``: what structured outputs cost, and the grammar library.

1. **Throughput.** A real neuron (``neuron serve``, the random-output tiny model of
   ``cortex.testing.random_model``, float32 on the CPU, its default threads), 16 concurrent
   requests (``--structured-streams``) of exactly ``--tokens`` (64) tokens each (``ignore_eos``,
   ``temperature`` 1, seeded), every one constrained to a JSON schema (nested objects, arrays,
   enums, bounded strings), against the same run unconstrained. Aggregate tokens/s (the usage
   figures) over rounds of each, alternating, until each has run ``--min-seconds``, after one
   warm-up round each. Goal: constrained ≥ 0.8 × unconstrained.
2. **Compile time** of a 50-property schema through the neuron's own ``Grammars`` (the
   llguidance tokenizer already built): the first time (a schema not seen before: a fresh
   ``title`` each time) and cached, median of 20.
3. **The library**, llguidance (chosen) against xgrammar (vLLM's default; both install with
   vLLM), on the same tokenizer and the 50-property schema: compile first/cached, and the time
   to compute one token's mask, apply it (the same code for both) and advance, along a
   200-token random walk through the schema, median.

    .venv/bin/python bench/engine.py --structured [--tokens 64] [--min-seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from engine_neuron import MODEL_ID, NeuronProcess, progress

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        "owner": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "vip": {"type": "boolean"}},
            "required": ["city", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "age", "tags", "owner"],
    "additionalProperties": False,
}


def wide_schema(title: str) -> dict[str, Any]:
    """50 properties of every kind, all required."""
    kinds: list[dict[str, Any]] = [
        {"type": "string"},
        {"type": "integer", "minimum": 0},
        {"type": "array", "items": {"type": "number"}},
        {"enum": ["a", "b", "c"]},
        {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]},
    ]
    properties = {f"field_{i}": kinds[i % len(kinds)] for i in range(50)}
    return {
        "title": title,
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


async def _round(url: str, streams: int, tokens: int, extra: dict[str, Any], seed: int) -> int:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Describe a pet."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 1.0,
        "chat_template_kwargs": {"enable_thinking": False},
        **extra,
    }
    async with httpx.AsyncClient(timeout=300) as client:
        replies = await asyncio.gather(
            *(
                client.post(f"{url}/v1/chat/completions", json={**body, "seed": seed + i})
                for i in range(streams)
            )
        )
    total = 0
    for reply in replies:
        reply.raise_for_status()
        total += int(reply.json()["usage"]["completion_tokens"])
    return total


def throughput(
    url: str, streams: int, tokens: int, modes: dict[str, dict[str, Any]], seconds: float
) -> dict[str, float]:
    """tok/s per mode; the modes' rounds alternate, so drift in the machine's speed (a shared
    VM's) falls on both alike."""
    for extra in modes.values():
        asyncio.run(_round(url, streams, max(4, tokens // 4), extra, 0))  # warm-up
    done = dict.fromkeys(modes, 0)
    spent = dict.fromkeys(modes, 0.0)
    seed = 1
    while min(spent.values()) < seconds:
        for name, extra in modes.items():
            started = time.perf_counter()
            done[name] += asyncio.run(_round(url, streams, tokens, extra, seed * 100))
            spent[name] += time.perf_counter() - started
        seed += 1
    return {name: done[name] / spent[name] for name in modes}


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def compile_times(model: Path) -> tuple[float, float]:
    """The neuron's ``Grammars``: (first, cached) ms for the 50-property schema."""
    from transformers import AutoTokenizer

    from cortex.neuron.formats.grammar import json_expr
    from cortex.neuron.structured.matcher import Grammars

    grammars = Grammars(AutoTokenizer.from_pretrained(str(model)), {0})
    grammars.compile(f"start: {json_expr({'type': 'object'})}\n", "warm-up")  # the tokenizer
    first, cached = [], []
    for i in range(20):
        grammar = f"start: {json_expr(wide_schema(f'schema {i}'))}\n"
        started = time.perf_counter()
        grammars.compile(grammar, "bench")
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        grammars.compile(grammar, "bench")
        cached.append(time.perf_counter() - started)
    return _median_ms(first), _median_ms(cached)


def libraries(model: Path) -> dict[str, tuple[float, float, float]]:
    """Per library: (compile first ms, compile cached ms, mask µs a token)."""
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    vocab = len(tokenizer)
    found: dict[str, tuple[float, float, float]] = {}
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    cache: dict[str, Any] = {}

    def ll_compile(schema: dict[str, Any]) -> Any:
        key = json.dumps(schema)
        if key in cache:
            return cache[key].deep_copy()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        cache[key] = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        return cache[key].deep_copy()

    first, cached = _compiles(ll_compile)
    matcher = ll_compile(wide_schema("walk"))
    bitmask = torch.zeros((1, (vocab + 31) // 32), dtype=torch.int32)

    def ll_step(logits: torch.Tensor) -> bool:
        row = bitmask[0]
        matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
        _apply(logits, bitmask)
        matcher.consume_token(int(logits.argmax()))
        return bool(matcher.is_stopped())

    found["llguidance"] = (first, cached, _walk(ll_step, vocab))
    try:
        import xgrammar as xgr
    except ImportError:
        return found
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=True)

    def xg_compile(schema: dict[str, Any]) -> Any:
        return compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": ")
        )

    first, cached = _compiles(xg_compile)
    xg_matcher = xgr.GrammarMatcher(xg_compile(wide_schema("walk")))
    xg_bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)

    def xg_step(logits: torch.Tensor) -> bool:
        xg_matcher.fill_next_token_bitmask(xg_bitmask, 0)
        _apply(logits, xg_bitmask)
        xg_matcher.accept_token(int(logits.argmax()))
        return bool(xg_matcher.is_terminated())

    found["xgrammar"] = (first, cached, _walk(xg_step, vocab))
    return found


_BITS = torch.tensor([1 << k if k < 31 else -(1 << 31) for k in range(32)], dtype=torch.int32)


def _apply(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The same mask application for both libraries (the neuron's, ``engine.constrain``)."""
    allowed = ((bitmask[:, :, None] & _BITS) != 0).flatten(1)[:, : logits.shape[1]]
    logits.masked_fill_(~allowed, float("-inf"))


def _compiles(compile_schema: Any) -> tuple[float, float]:
    compile_schema(wide_schema("warm-up"))
    first, cached = [], []
    for i in range(20):
        schema = wide_schema(f"schema {i}")
        started = time.perf_counter()
        compile_schema(schema)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        compile_schema(schema)
        cached.append(time.perf_counter() - started)
    return _median_ms(first), _median_ms(cached)


def _walk(step: Any, vocab: int) -> float:
    """Median µs of one mask-and-advance along a seeded random walk (200 tokens at most)."""
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(200):
        logits = torch.randn(1, vocab, generator=generator)
        started = time.perf_counter()
        stopped = step(logits)
        times.append(time.perf_counter() - started)
        if stopped:
            break
    return statistics.median(times) * 1e6


def run_structured(args: argparse.Namespace) -> None:
    from cortex.testing.random_model import cached_random_model

    model = (args.model or cached_random_model()).resolve()
    tokens = args.tokens or 64
    seconds = args.min_seconds or 3.0
    streams = 16
    print(
        f"engine bench --structured: model {model.name} (random output, float32, cpu), "
        f"{streams} streams x {tokens} tokens, torch {torch.__version__}",
        flush=True,
    )
    constrained = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}}
    }
    with tempfile.TemporaryDirectory(prefix="engine-bench-structured-") as tmp:
        process = NeuronProcess(
            model,
            threads=args.neuron_threads,
            dtype="float32",
            cuda=False,
            log=Path(tmp) / "neuron.log",
            timeout=args.timeout,
        )
        with process as neuron:
            progress("unconstrained and constrained rounds, alternating")
            found = throughput(
                neuron.url, streams, tokens, {"free": {}, "held": constrained}, seconds
            )
            free, held = found["free"], found["held"]
    print(
        f"structured tok/s @{streams} streams: constrained {held:,.0f} vs unconstrained "
        f"{free:,.0f}, ratio {held / free:.2f} (goal >= 0.80)",
        flush=True,
    )
    first, cached = compile_times(model)
    print(
        f"compile 50-property schema (neuron's Grammars): first {first:.2f} ms vs cached "
        f"{cached:.3f} ms, ratio {cached / first:.3f}",
        flush=True,
    )
    found = libraries(model)
    ll = found["llguidance"]
    xg = found.get("xgrammar")
    for index, label, unit in (
        (0, "compile first", "ms"),
        (1, "compile cached", "ms"),
        (2, "mask+advance a token", "us"),
    ):
        peer = (
            f" vs xgrammar {xg[index]:.3f} {unit}, ratio {ll[index] / xg[index]:.2f}"
            if xg
            else " (xgrammar not installed)"
        )
        print(f"library {label}: llguidance {ll[index]:.3f} {unit}{peer}", flush=True)
