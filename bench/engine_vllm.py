"""``bench/engine.py --engine vllm``: the neuron running vLLM against vLLM's own server.

Three servers on the same model folder, one after another (each measured alone), with the
same streaming clients as the rest of ``bench/engine.py`` (``measure_neuron``: the official
``openai`` SDK, N streams released together, ``ignore_eos``, greedy, ``--tokens`` each):

1. vLLM's OpenAI server, ``python -m vllm.entrypoints.openai.api_server``, with the engine
   arguments the neuron gives vLLM (dtype, context, KV cache bytes, max_num_seqs, prefix
   caching, ``enforce_eager`` on a CPU);
2. ``neuron serve --engine vllm`` with the same KV cache bytes;
3. ``neuron serve --engine transformers``: cortex's own engine, for reference.

For each N: aggregate tok/s and TTFT p50 of each, and the ratios neuron(vLLM)/vLLM server
(goals: tok/s >= 0.9, TTFT within 10%) and neuron(transformers)/vLLM server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from engine_neuron import (
    MODEL_ID,
    BenchError,
    NeuronProcess,
    Suite,
    free_port,
    log_tail,
    progress,
    stop_process,
)

# The trained tiny model answers this with visible text from its first token, so TTFT is the
# first token's on every server (the neuron holds back leading whitespace, which vLLM's
# server streams: with a prompt answered by blank lines first, the two would time different
# things).
MESSAGES = [{"role": "user", "content": "Say hello."}]
# The KV cache every server gets: a bench's streams fit many times over.
KV_CACHE_BYTES = 256 * 1024**2
MAX_NUM_SEQS = 32


class VllmServer:
    """vLLM's own OpenAI server on a free 127.0.0.1 port, serving the model as ``bench``."""

    def __init__(self, suite: Suite, context: int, log: Path, timeout: float) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.timeout = timeout
        self.command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(suite.model), "--served-model-name", MODEL_ID,
            "--host", "127.0.0.1", "--port", str(port),
            "--dtype", suite.dtype, "--max-model-len", str(context),
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
            "--max-num-seqs", str(MAX_NUM_SEQS),
            "--enable-prefix-caching", "--disable-log-stats",
        ]  # fmt: skip
        if suite.device.type == "cpu":
            self.command.append("--enforce-eager")
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VllmServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"vLLM's server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/v1/models", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"vLLM's server was not ready within {self.timeout:g} s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            print(f"vLLM server log, last lines:\n{self.log_tail()}", file=sys.stderr)
        self.stop()

    def stop(self) -> None:
        stop_process(self.process, 30)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def _context(model: Path, dtype_bytes: int) -> int:
    """What both get as their context: at most 4,096 tokens, and what the KV cache holds (in
    vLLM's CPU blocks of 128 tokens, one kept as its null block), as the neuron caps it."""
    from cortex.neuron.engines import kv_bytes_per_token, read_config

    config = read_config(model)
    context = min(int(config.get("max_position_embeddings") or 4096), 4096)
    per_token = kv_bytes_per_token(config, dtype_bytes)
    if per_token:
        context = min(context, (KV_CACHE_BYTES // per_token // 128 - 1) * 128)
    return context


def run_vllm(suite: Suite, plan: Any, measure: Any) -> None:
    """The three servers in turn, then one line per figure."""
    context = _context(suite.model, 2 if suite.dtype in ("bfloat16", "float16") else 4)
    kv = ["--kv-cache-bytes", str(KV_CACHE_BYTES), "--max-num-seqs", str(MAX_NUM_SEQS)]
    results: dict[str, dict[int, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-vllm-") as tmp:
        progress("starting vLLM's own OpenAI server")
        with VllmServer(suite, context, Path(tmp) / "vllm.log", plan.timeout) as server:
            results["server"] = _measure(measure, server.url, plan)
        for engine in ("vllm", "transformers"):
            progress(f"starting the neuron with --engine {engine}")
            neuron = NeuronProcess(
                suite.model,
                threads=plan.neuron_threads,
                dtype=suite.dtype,
                cuda=suite.device.type == "cuda",
                log=Path(tmp) / f"neuron-{engine}.log",
                timeout=plan.timeout,
                extra=["--engine", engine, *kv],
            )
            with neuron:
                results[engine] = _measure(measure, neuron.url, plan)
    for n in plan.ns:
        server, ours, own = results["server"][n], results["vllm"][n], results["transformers"][n]
        print(
            f"N={n} neuron(vllm) {ours.tokens_per_s:,.0f} tok/s (vLLM server "
            f"{server.tokens_per_s:,.0f} tok/s, ratio {ours.tokens_per_s / server.tokens_per_s:.2f}"
            f", goal >= 0.90; neuron(transformers) {own.tokens_per_s:,.0f} tok/s, ratio "
            f"{own.tokens_per_s / server.tokens_per_s:.2f})"
        )
        ttft = {k: _p50(v[n]) for k, v in results.items()}
        held = {k: v[n].first_text_tokens for k, v in results.items() if v[n].first_text_tokens > 1}
        if held:
            print(f"N={n} note: the first text came with more than one token: {held}")
        if ttft["server"]:
            print(
                f"N={n} TTFT p50 neuron(vllm) {ttft['vllm'] * 1e3:,.1f} ms (vLLM server "
                f"{ttft['server'] * 1e3:,.1f} ms, ratio {ttft['vllm'] / ttft['server']:.2f}, goal "
                f"<= 1.10; neuron(transformers) {ttft['transformers'] * 1e3:,.1f} ms, ratio "
                f"{ttft['transformers'] / ttft['server']:.2f})"
            )


def _measure(measure: Any, url: str, plan: Any) -> dict[int, Any]:
    figures: dict[int, Any] = asyncio.run(
        measure(url, plan.ns, plan.tokens, plan.min_seconds, plan.timeout, MESSAGES)
    )
    return figures


def _p50(figures: Any) -> float:
    return statistics.median(figures.ttfts) if figures.ttfts else 0.0
