"""Embedding throughput: the neuron's ``POST /v1/embeddings`` against sentence-transformers.

One batch of ``--inputs`` (64) texts of mixed lengths (seeded word runs from the test corpus,
2 to ``--max-words`` words, each within the model's context), embedded ``--rounds`` times
after ``--warmup`` rounds, by:

* ours: a real neuron process (``neuron serve --preload bench=FOLDER --cpu-threads N``,
  float32 on the CPU), one request per round carrying the whole batch (``encoding_format``
  ``float``, then ``base64``), timed from the request to the parsed reply: HTTP, JSON and
  the neuron's batching included;
* the peer: ``SentenceTransformer(FOLDER, device="cpu").encode(texts)`` in this process with
  ``torch.set_num_threads(N)``, at its defaults (``batch_size`` 32, inputs sorted by length)
  and again with ``batch_size`` equal to the batch.

The four runs take turns within each round (the machine's other load weighs on them alike).
Each figure is the median round as inputs per second, printed beside the peer's with the
ratio (ours / peer; above 1 is faster). A last line gives the largest difference between
the two sets of vectors (goal: under 1e-5). Models: the tiny fixtures of
``cortex.testing.embedding`` (``--pooling``, default all three) or ``--model FOLDER``.

    PYTHONPATH=src .venv/bin/python bench/embeddings.py [--threads 2] [--rounds 20]

sentence-transformers is not a dependency of cortex: install it beside it to run this.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from cortex.testing.embedding import POOLINGS, cached_embedding_model
from cortex.testing.tokenizer import corpus_text
from engine_neuron import MODEL_ID, NeuronProcess, device_name, progress

GOAL = 1e-5


def texts(count: int, max_words: int, seed: int, tokenizer: object, limit: int) -> list[str]:
    """``count`` seeded runs of corpus words, 2 to ``max_words`` long, each at most ``limit``
    tokens."""
    words = re.findall(r"[A-Za-z]+", corpus_text())
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        n = rng.randint(2, max_words)
        start = rng.randrange(len(words) - n)
        text = " ".join(words[start : start + n]) + "."
        if len(tokenizer(text)["input_ids"]) <= limit:  # type: ignore[operator]
            out.append(text)
    return out


def median_rates(
    runs: dict[str, Callable[[], object]], count: int, warmup: int, rounds: int
) -> dict[str, float]:
    """Inputs per second of each run's median round; the runs take turns in every round, so
    that what else the machine does weighs on them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            begun = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - begun)
    return {name: count / statistics.median(values) for name, values in seconds.items()}


def neuron_vectors(client: httpx.Client, url: str, batch: list[str], fmt: str) -> np.ndarray:
    response = client.post(
        f"{url}/v1/embeddings", json={"model": MODEL_ID, "input": batch, "encoding_format": fmt}
    )
    response.raise_for_status()
    data = response.json()["data"]
    if fmt == "base64":
        import base64

        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def bench_model(folder: Path, label: str, options: argparse.Namespace) -> list[str]:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    peer = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    limit = peer.max_seq_length or tokenizer.model_max_length
    batch = texts(options.inputs, options.max_words, options.seed, tokenizer, limit)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in batch)
    n, warm, rounds = len(batch), options.warmup, options.rounds
    progress(f"{label}: sentence-transformers, {n} inputs, {tokens} tokens")
    theirs = peer.encode(batch, convert_to_numpy=True)
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        progress(f"{label}: starting the neuron")
        neuron = NeuronProcess(
            folder,
            threads=options.threads,
            dtype="float32",
            cuda=False,
            log=Path(tmp) / "neuron.log",
            timeout=120,
        )
        with neuron, httpx.Client(timeout=120) as client:
            mine = neuron_vectors(client, neuron.url, batch, "float")
            progress(f"{label}: {rounds} rounds, taking turns")
            rates = median_rates(
                {
                    "float": lambda: neuron_vectors(client, neuron.url, batch, "float"),
                    "base64": lambda: neuron_vectors(client, neuron.url, batch, "base64"),
                    "peer": lambda: peer.encode(batch),
                    "peer_whole": lambda: peer.encode(batch, batch_size=n),
                },
                n,
                warm,
                rounds,
            )
    ours = {fmt: rates[fmt] for fmt in ("float", "base64")}
    peer_default, peer_whole = rates["peer"], rates["peer_whole"]
    head = f"embeddings {label}, {n} inputs ({tokens} tokens), {options.threads} threads"
    lines = [
        f"{head}, float: neuron {ours['float']:,.0f} inputs/s vs sentence-transformers "
        f"{peer_default:,.0f} inputs/s (batch_size 32), ratio {ours['float'] / peer_default:.2f}",
        f"{head}, base64: neuron {ours['base64']:,.0f} inputs/s vs sentence-transformers "
        f"{peer_default:,.0f} inputs/s (batch_size 32), ratio {ours['base64'] / peer_default:.2f}",
        f"{head}, float: neuron {ours['float']:,.0f} inputs/s vs sentence-transformers "
        f"{peer_whole:,.0f} inputs/s (batch_size {n}), ratio {ours['float'] / peer_whole:.2f}",
    ]
    diff = float(np.abs(mine.astype(np.float64) - theirs.astype(np.float64)).max())
    verdict = "within" if diff < GOAL else "NOT within"
    lines.append(
        f"vectors {label}: max |neuron - sentence-transformers| = {diff:.2e} ({verdict} {GOAL:g})"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pooling", choices=[*POOLINGS, "all"], default="all")
    parser.add_argument("--model", type=Path, help="a sentence-transformers folder instead")
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=19)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print(f"# {device_name(torch.device('cpu'))}, torch {torch.__version__}", flush=True)
    if options.model is not None:
        models = [(options.model.resolve(), options.model.name)]
    else:
        chosen = POOLINGS if options.pooling == "all" else (options.pooling,)
        models = [(cached_embedding_model(p), f"tiny {p}-pooling") for p in chosen]
    for folder, label in models:
        for line in bench_model(folder, label, options):
            print(line, flush=True)


if __name__ == "__main__":
    main()
