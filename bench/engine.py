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

    .venv/bin/python bench/engine.py [--model PATH] [--n 1,4,16,32] [--tokens 64]
        [--trained] [--cpu-threads N] [--neuron-threads N] [--min-seconds 3] [--timeout 300]
        [--gpu] [--quick]

The default model is the tiny local Qwen3 (``cortex.testing.cached_model(trained=False)``),
float32 on the CPU; it writes only newlines, which the neuron streams once text follows, so
its TTFT is the whole stream's. ``--trained`` takes the trained tiny model instead: same
shape, it writes a sentence first, so TTFT is the first token's (and the clients, parsing a
chunk a token, take more of a small machine's CPU). ``--quick`` measures N=1,16 with 16
tokens, 1 s a figure. ``--gpu`` then repeats everything on one CUDA GPU with a randomly
initialised Qwen3-0.6B-shaped model (bfloat16, the tiny tokenizer) built into a temp folder;
without CUDA it says so and skips.
The neuron is stopped at the end, also on errors, Ctrl-C and SIGTERM (and, on Linux, when
this process is killed outright).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import openai
import torch
import transformers
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).parent))

from cortex.neuron.cli import default_cpu_threads as neuron_default_threads
from cortex.neuron.cli import usable_cores
from engine_peers import MESSAGES, WARMUP_TOKENS, PeerError, Peers, build_gpu_model

MODEL_ID = "bench"
DEFAULT_N = "1,4,16,32"
DEFAULT_TOKENS = 64
QUICK_N = "1,16"
QUICK_TOKENS = 16
DEFAULT_SECONDS = 3.0  # each figure repeats its unit at least this long
QUICK_SECONDS = 1.0
# continuous_usage_stats (vLLM's) puts the usage so far in every chunk: it tells whether the
# first text came with the first token or was held back.
STREAM_OPTIONS: Any = {"include_usage": True, "continuous_usage_stats": True}


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


def progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


# --- the neuron process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: Linux sends it SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NeuronProcess:
    """``neuron serve`` with the model preloaded as ``bench``; stopped when the block exits."""

    def __init__(
        self,
        model: Path,
        *,
        threads: int | None,
        dtype: str,
        cuda: bool,
        log: Path,
        timeout: float,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.device = "cuda" if cuda else "cpu"
        self.dtype = dtype
        self.log_path = log
        self.timeout = timeout
        self.command = [
            sys.executable, "-m", "cortex.neuron", "serve",
            "--listen", f"127.0.0.1:{port}",
            "--preload", f"{MODEL_ID}={model}", "--allowed-path", str(model),
            "--dtype", dtype,
            "--log-level", "warning",
        ]  # fmt: skip
        if threads is not None:
            self.command += ["--cpu-threads", str(threads)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if cuda:
            # The one GPU the peers use (cuda:0), even where the neuron could use more.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            self.env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0] if visible else "0"
        else:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU run stays on the CPU
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NeuronProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(self.timeout)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Read the log before stopping: what the neuron writes as it stops would bury the cause.
        tail = self.log_tail()
        exited = self.process.poll() if self.process is not None else None
        self.stop()
        if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            if exited is not None:
                print(f"the neuron had exited with status {exited}", file=sys.stderr)
            print(f"neuron log, last lines before it was stopped:\n{tail}", file=sys.stderr)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        """Until the preloaded model is ready on the expected device and dtype."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        answered_without_it: float | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the neuron exited with status {self.process.returncode}")
            listening, record = self._record()
            if listening and record is None:
                # The preload registers its record as it starts; none for a while: it failed.
                answered_without_it = answered_without_it or time.monotonic()
                if time.monotonic() - answered_without_it > 10:
                    raise BenchError(f"the neuron lists no model {MODEL_ID!r}: its preload failed")
            if record is not None and record["state"] == "failed":
                raise BenchError(f"the neuron could not load the model: {record.get('error')}")
            if record is not None and record["state"] == "ready":
                devices = record.get("devices") or []
                if not devices or not all(d.startswith(self.device) for d in devices):
                    raise BenchError(f"the neuron put the model on {devices}, not {self.device}")
                if record.get("dtype") != self.dtype:
                    raise BenchError(f"the neuron loaded {record.get('dtype')}, not {self.dtype}")
                return
            time.sleep(0.2)
        raise BenchError(f"the neuron did not have the model ready within {timeout:g} s")

    def _record(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether the neuron answered, its record of the benchmark's model)."""
        try:
            loaded = httpx.get(f"{self.url}/models", timeout=2.0).json()["loaded"]
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            return False, None  # not listening yet
        return True, next((r for r in loaded if r.get("id") == MODEL_ID), None)


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


async def _stream(client: AsyncOpenAI, start: asyncio.Barrier, tokens: int) -> Stream:
    await start.wait()
    sent = time.perf_counter()
    first_text, first_text_tokens, usage = None, 0, None
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,
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


async def _round(client: AsyncOpenAI, n: int, tokens: int, timeout: float) -> list[Stream]:
    """N streams released together; all of them, or a BenchError saying what went wrong."""
    start = asyncio.Barrier(n)
    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_stream(client, start, tokens)) for _ in range(n)]
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
    url: str, ns: list[int], tokens: int, min_seconds: float, timeout: float
) -> dict[int, NeuronFigures]:
    """Per N: one warm-up round, then rounds until ``min_seconds`` of them have passed."""
    figures = {}
    async with AsyncOpenAI(
        base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=timeout
    ) as client:
        for n in ns:
            progress(f"neuron, N={n}")
            await _round(client, n, min(tokens, WARMUP_TOKENS), timeout)
            streams: list[Stream] = []
            elapsed = 0.0
            cpu = _cpu_seconds()
            while elapsed < min_seconds:
                batch = await _round(client, n, tokens, timeout)
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
class Suite:
    """What one suite measures, and where."""

    model: Path
    device: torch.device
    dtype: str  # as the neuron's --dtype spells it


@dataclass(frozen=True, slots=True)
class Plan:
    """How every suite measures."""

    ns: list[int]
    tokens: int
    threads: int
    neuron_threads: int | None  # None: the neuron's default
    min_seconds: float
    timeout: float


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return f"cpu ({row.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def run_suite(suite: Suite, plan: Plan) -> None:
    """The peers for every N, then the neuron for every N; then the lines."""
    torch.set_num_threads(plan.threads)
    progress(f"loading {suite.model} with transformers on {suite.device}")
    try:
        peers = Peers(suite.model, suite.device, getattr(torch, suite.dtype))
    except (OSError, ValueError) as exc:
        raise BenchError(f"transformers cannot load {suite.model}: {exc}") from exc
    print(
        f"engine bench: model {suite.model.name} ({peers.parameters / 1e6:,.1f}M params, "
        f"{suite.dtype}) on {device_name(suite.device)}, {plan.threads} threads "
        f"(neuron: {plan.neuron_threads or 'its default, ' + str(neuron_default_threads())}), "
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


def _plan() -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model folder (default: tiny)")
    parser.add_argument(
        "--trained",
        action="store_true",
        help="the trained tiny model: it writes text, so TTFT is the first token's",
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
    parser.add_argument("--gpu", action="store_true", help="also a 0.6B-shaped model on CUDA")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"N={QUICK_N}, {QUICK_TOKENS} tokens, {QUICK_SECONDS:g} s a figure",
    )
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
    if plan.neuron_threads is not None and plan.neuron_threads < 1:
        parser.error("--neuron-threads must be positive")
    if plan.tokens < 1 or plan.threads < 1 or plan.timeout <= 0 or plan.min_seconds <= 0:
        parser.error("--tokens, --cpu-threads, --min-seconds and --timeout must be positive")
    return args, plan


def main() -> None:
    args, plan = _plan()
    # SIGTERM unwinds like Ctrl-C (which asyncio.run turns into a clean cancellation), so the
    # neuron is stopped on the way out; SIGINT too where the shell started this ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    transformers.utils.logging.disable_progress_bar()
    started = time.monotonic()
    try:
        from cortex.testing import cached_model

        model = args.model or cached_model(trained=args.trained)
        if not (model / "config.json").is_file():
            raise BenchError(f"{model} is not a Hugging Face model folder (no config.json)")
        run_suite(Suite(model.resolve(), torch.device("cpu"), "float32"), plan)
        if args.gpu and not torch.cuda.is_available():
            print(f"--gpu: skipped, CUDA is not available (torch {torch.__version__})")
        elif args.gpu:
            with tempfile.TemporaryDirectory(prefix="engine-bench-gpu-") as tmp:
                progress("building a random Qwen3-0.6B-shaped model on cuda")
                cuda = torch.device("cuda")
                tiny = cached_model(trained=False)
                gpu_model = build_gpu_model(tiny, Path(tmp) / "qwen3-0.6b-random", cuda)
                run_suite(Suite(gpu_model, cuda, "bfloat16"), plan)
    except BenchError as exc:
        print(f"engine bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("engine bench: interrupted", file=sys.stderr)
        sys.exit(130)
    progress(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
