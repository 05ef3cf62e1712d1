"""``bench/engine.py --mixed``: one long prompt decoding among short ones, and the KV memory
the neuron holds for them.

Sixteen sequences stream together (``ignore_eos``, ``max_tokens`` ``--mixed-tokens`` (64),
``temperature`` 0): one whose prompt is the ``--prefix`` mode's kind of agent conversation
(``--prefix-tokens``, 12,000 ± 500, another seed), and ``--mixed-short`` (15) short chat
prompts, each a different one. The neuron first runs one untimed round of 16 short prompts
with fewer tokens; the long prompt is sent once, so nothing of it is in a prefix cache.

- tok/s: every stream's completion tokens (each must be exactly ``--mixed-tokens``) over the
  time from the first send to the last stream's end, prefill included. The peer: one
  transformers ``generate`` over the same 16 rendered prompts in this process, left-padded
  to the longest, greedy with ``min_new_tokens == max_new_tokens``, timed once after an
  untimed warm-up over 16 short prompts (where its padded KV cache and attention mask would
  not fit in the free memory it is skipped, and so is it when it runs out of memory).
- KV: while the streams run, ``GET /node`` every 0.05 s; the model record's
  ``kv_blocks_used`` × (``kv_cache_bytes`` // ``kv_blocks_total``) is what the neuron holds,
  its peak over the polls is the figure. Against it: the real tokens' KV, Σ over the 16
  sequences of (prompt + generated tokens) × bytes a token (2 × layers × key/value heads ×
  head_dim × the dtype's bytes, from ``config.json``): ``KV held / real tokens`` (goal at
  most 1.2). And the padded cache today's engine holds, 16 × the longest sequence × bytes a
  token, with its ratio to the real tokens. At the peak poll the line also gives the
  ``cortex_neuron_kv_cache_tokens`` gauge of ``GET /metrics`` (the tokens the running
  sequences hold then, read right after /node) and the held KV against those tokens' KV; a
  note follows where that poll saw under 90% of the real tokens (the polls missed the moment
  all sequences were at full length, or they never were at once: the long prompt's prefill
  can hold its sequence back while the short ones finish), as the first ratio then
  understates. A neuron whose /node reports no KV blocks has no paged cache yet; the line
  says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import torch
from openai import AsyncOpenAI

from engine_neuron import (
    MODEL_ID,
    BenchError,
    NeuronProcess,
    Suite,
    node_record,
    progress,
    prometheus_values,
)
from engine_peers import WARMUP_TOKENS, PeerError, Peers
from engine_prefix import ModeOptions, agent_conversation, load_tokenizer, prompt_tokens

MIXED_SHORT = 15
MIXED_TOKENS = 64
MIXED_SEED = 2
KV_GOAL = 1.2
POLL_SECONDS = 0.05
TOPICS = (
    "the sea", "a lighthouse", "autumn rain", "a city at night", "an old clock", "the desert",
    "a mountain lake", "winter birds", "a quiet library", "the first snow", "a paper boat",
    "a train station", "the moon", "a garden gate", "a kettle", "a harbour", "spring wind",
)  # fmt: skip
SHORT_TASKS = ("Write a short poem about {}.", "Describe {} in two sentences.")
KV_TOKENS_GAUGE = "cortex_neuron_kv_cache_tokens"


def short_conversations(count: int, task: int = 0) -> list[list[dict[str, str]]]:
    """``count`` different one-message chats (``task`` picks the first of the phrasings)."""
    return [
        [{"role": "user", "content": SHORT_TASKS[(task + i // len(TOPICS)) % 2].format(topic)}]
        for i, topic in ((i, TOPICS[i % len(TOPICS)]) for i in range(count))
    ]


def kv_bytes_per_token(model: Path, dtype: str) -> int:
    """2 (key and value) × layers × key/value heads × head_dim × the dtype's bytes."""
    config = json.loads((model / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return int(2 * config["num_hidden_layers"] * heads * head_dim * size)


# --- the neuron ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    used: int
    total: int
    cache_bytes: int
    gauge_tokens: float | None  # the kv_cache_tokens gauge, read right after /node


@dataclass(frozen=True, slots=True)
class MixedRun:
    tokens_per_s: float
    sequence_tokens: list[int]  # prompt + generated, per sequence
    prompt_tokens: list[int]
    samples: list[Sample]


async def _stream(
    client: AsyncOpenAI, messages: list[dict[str, str]], tokens: int, start: asyncio.Barrier
) -> tuple[float, float, int, int]:
    """(sent, done, prompt tokens, completion tokens)."""
    await start.wait()
    loop = asyncio.get_running_loop()
    sent = loop.time()
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=cast(Any, messages),
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
    if usage is None:
        raise BenchError("a stream ended without a usage chunk")
    return sent, loop.time(), usage.prompt_tokens, usage.completion_tokens


async def _poll(http: httpx.AsyncClient, url: str, samples: list[Sample]) -> None:
    """Read /node (and the KV-tokens gauge) every POLL_SECONDS until cancelled."""
    while True:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            record = await node_record(http, url)
            gauge = None
            with contextlib.suppress(httpx.HTTPError):
                metrics = await http.get(f"{url}/metrics")
                gauge = prometheus_values(metrics.text, [KV_TOKENS_GAUGE]).get(KV_TOKENS_GAUGE)
            samples.append(
                Sample(
                    int(record.get("kv_blocks_used") or 0),
                    int(record.get("kv_blocks_total") or 0),
                    int(record.get("kv_cache_bytes") or 0),
                    gauge,
                )
            )
        await asyncio.sleep(POLL_SECONDS)


async def _round(
    client: AsyncOpenAI,
    conversations: list[list[dict[str, str]]],
    tokens: int,
    timeout: float,
    poll: Any = None,
) -> list[tuple[float, float, int, int]]:
    start = asyncio.Barrier(len(conversations))
    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_stream(client, c, tokens, start)) for c in conversations]
            poller = group.create_task(poll) if poll is not None else None
            await asyncio.gather(*tasks)
            if poller is not None:
                poller.cancel()
    except TimeoutError:
        raise BenchError(f"--mixed: the streams did not finish within {timeout:g} s") from None
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if isinstance(first, BenchError | openai.APIError):
            raise BenchError(f"--mixed: {type(first).__name__}: {first}") from failed
        raise
    streams = [task.result() for task in tasks]
    wrong = sorted({s[3] for s in streams if s[3] != tokens})
    if wrong:
        raise BenchError(f"--mixed: streams generated {wrong} tokens instead of {tokens}")
    return streams


async def _mixed_run(
    url: str, conversations: list[list[dict[str, str]]], tokens: int, timeout: float
) -> MixedRun:
    warmup = short_conversations(len(conversations), task=1)  # not the measured ones
    async with (
        AsyncOpenAI(
            base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=timeout
        ) as client,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        progress("neuron warm-up: 16 short prompts")
        await _round(client, warmup, min(tokens, WARMUP_TOKENS), timeout)
        progress("neuron: the long prompt among the short ones")
        samples: list[Sample] = []
        streams = await _round(client, conversations, tokens, timeout, _poll(http, url, samples))
    elapsed = max(s[1] for s in streams) - min(s[0] for s in streams)
    return MixedRun(
        tokens_per_s=sum(s[3] for s in streams) / elapsed,
        sequence_tokens=[s[2] + s[3] for s in streams],
        prompt_tokens=[s[2] for s in streams],
        samples=samples,
    )


# --- the peer --------------------------------------------------------------------------


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemAvailable:"):
                return int(row.split()[1]) * 1024
    return 1 << 62  # unknown: try


def _peer(
    suite: Suite, texts: list[str], longest: int, options: ModeOptions
) -> tuple[float | None, str]:
    """(the padded static batch's tok/s, or None and why not)."""
    torch.set_num_threads(options.threads)
    progress(f"loading {suite.model} with transformers on {suite.device}")
    try:
        peers = Peers(suite.model, suite.device, getattr(torch, suite.dtype))
    except (OSError, ValueError) as exc:
        raise BenchError(f"transformers cannot load {suite.model}: {exc}") from exc
    try:
        length = longest + options.mixed_tokens
        per_token = kv_bytes_per_token(suite.model, suite.dtype) + length  # and a mask row
        need = len(texts) * length * per_token
        free = _free_memory(suite.device)
        if need > 0.8 * free:
            return None, (
                f"skipped: its padded KV cache and mask need about {need / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB are free"
            )
        progress("transformers static batch over the 16 prompts (padded)")
        return peers.distinct_batch(texts, options.mixed_tokens), ""
    except torch.OutOfMemoryError:
        return None, "it ran out of memory"
    except PeerError as exc:
        raise BenchError(f"transformers: {exc}") from exc
    finally:
        peers.close()


# --- the mode --------------------------------------------------------------------------


def run_mixed(suite: Suite, options: ModeOptions) -> None:
    tokenizer = load_tokenizer(suite.model)
    conversations = [
        agent_conversation(tokenizer, options.long_tokens, MIXED_SEED),
        *short_conversations(options.short),
    ]
    local = [prompt_tokens(tokenizer, c) for c in conversations]
    texts = [
        str(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
        for c in conversations
    ]
    peer, why = _peer(suite, texts, max(local), options)
    with tempfile.TemporaryDirectory(prefix="engine-bench-mixed-") as tmp:
        progress("starting the neuron")
        neuron = NeuronProcess(
            suite.model,
            threads=options.neuron_threads,
            dtype=suite.dtype,
            cuda=suite.device.type == "cuda",
            log=Path(tmp) / "neuron.log",
            timeout=options.timeout,
        )
        with neuron:
            run = asyncio.run(
                _mixed_run(neuron.url, conversations, options.mixed_tokens, options.timeout)
            )
    per_token = kv_bytes_per_token(suite.model, suite.dtype)
    for line in mixed_lines(run, peer, why, per_token, options):
        print(line, flush=True)


def _size(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def mixed_lines(
    run: MixedRun, peer: float | None, why: str, per_token: int, options: ModeOptions
) -> list[str]:
    n = len(run.sequence_tokens)
    head = (
        f"mixed: 1 × {run.prompt_tokens[0]:,}-token prompt among {n - 1} short ones "
        f"({min(run.prompt_tokens[1:], default=0)}-{max(run.prompt_tokens[1:], default=0)} "
        f"tokens), {options.mixed_tokens} tokens each: neuron {run.tokens_per_s:,.1f} tok/s"
    )
    if peer is None:
        lines = [f"{head} (static batch n/a: {why})"]
    else:
        lines = [f"{head} (static batch {peer:,.1f} tok/s, ratio {run.tokens_per_s / peer:.2f})"]
    real = sum(run.sequence_tokens) * per_token
    padded = n * max(run.sequence_tokens) * per_token
    tail = (
        f"real tokens {sum(run.sequence_tokens):,} × {per_token:,} B = {_size(real)}; "
        f"today's padded cache {n} × {max(run.sequence_tokens):,} tokens = {_size(padded)}, "
        f"ratio {padded / real:.2f}"
    )
    with_blocks = [s for s in run.samples if s.total > 0]
    if not with_blocks:
        lines.append(
            f"mixed KV: held n/a, /node reported no KV blocks in {len(run.samples)} polls "
            f"(kv_blocks_total 0: no paged cache in this neuron yet); {tail}"
        )
        return lines
    peak = max(with_blocks, key=lambda s: s.used)
    if peak.used == 0:
        lines.append(
            f"mixed KV: held n/a, none of {len(run.samples)} polls of /node saw a block in "
            f"use (the round was too short to catch); {tail}"
        )
        return lines
    block = peak.cache_bytes // peak.total
    held = peak.used * block
    gauge = ""
    if peak.gauge_tokens is not None and peak.gauge_tokens > 0:
        gauge = (
            f"; at that poll the running sequences held {peak.gauge_tokens:,.0f} tokens "
            f"({KV_TOKENS_GAUGE}), held / those {held / (peak.gauge_tokens * per_token):.2f}"
        )
    lines.append(
        f"mixed KV: neuron held {peak.used:,} of {peak.total:,} blocks × {block:,} B = "
        f"{_size(held)} (peak of {len(run.samples)} polls), KV held / real tokens "
        f"{held / real:.2f} (goal <= {KV_GOAL:.1f}); {tail}{gauge}"
    )
    total = sum(run.sequence_tokens)
    if peak.gauge_tokens is not None and peak.gauge_tokens < 0.9 * total:
        lines.append(
            f"note: at the peak poll the running sequences held {peak.gauge_tokens:,.0f} of "
            f"the {total:,} real tokens: the polls did not see all 16 at full length, so KV "
            "held / real tokens understates; held / those is the like-for-like figure"
        )
    return lines
