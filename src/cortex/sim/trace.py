"""Request traces for the fleet simulator: generated (Zipf popularity, agent sessions; steady,
diurnal or bursty arrivals) or read from a JSONL file of ``{t, model, prompt_tokens,
output_tokens}`` (and optionally ``size_gb``, a model's memory).

A trace is columns (NumPy arrays, sorted by time) rather than a million objects: the
simulator reads one row at a time as each request arrives.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GB = 1_000_000_000
DAY = 86_400.0

# Memory a model takes when loaded, in GB (weights in their usual precision or
# quantisation, plus a KV cache): from a 1.5B model to a 70B one at 8 bits. Small and
# mid-sized models are the most common in a catalogue.
SIZE_MIX_GB = (1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 70.0)
SIZE_MIX_WEIGHTS = (0.08, 0.12, 0.16, 0.2, 0.16, 0.1, 0.08, 0.06, 0.04)


@dataclass(frozen=True, slots=True)
class Trace:
    t: np.ndarray  # arrival, seconds from the start (float64, sorted)
    model: np.ndarray  # index into ``models`` (int32)
    prompt_tokens: np.ndarray  # int32
    output_tokens: np.ndarray  # int32
    models: tuple[str, ...]
    sizes: tuple[int, ...]  # bytes per model, as loaded

    def __len__(self) -> int:
        return len(self.t)

    @property
    def duration(self) -> float:
        return float(self.t[-1]) if len(self.t) else 0.0


def model_sizes(count: int, rng: np.random.Generator) -> list[int]:
    weights = np.array(SIZE_MIX_WEIGHTS) / sum(SIZE_MIX_WEIGHTS)
    drawn = rng.choice(np.array(SIZE_MIX_GB), size=count, p=weights)
    return [int(gb * GB) for gb in drawn]


def arrivals(count: int, duration: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``count`` arrival times over ``duration`` seconds, sorted.

    ``steady``: a Poisson process. ``diurnal``: its rate follows the day, from a fifth of the
    mean at night to 1.8× in the afternoon. ``bursty``: steady, but a third of the requests
    come in bursts (two-minute storms at random times, ten an hour).
    """
    if kind == "steady":
        times = rng.uniform(0.0, duration, count)
    elif kind == "diurnal":
        # Thinning: uniform candidates, kept with probability rate(t) / max rate.
        def rate(t: np.ndarray) -> np.ndarray:
            return 1.0 - 0.8 * np.cos(2 * math.pi * (t % DAY) / DAY - math.pi / 6)

        kept: list[np.ndarray] = []
        total = 0
        while total < count:
            candidates = rng.uniform(0.0, duration, count * 2)
            keep = candidates[rng.uniform(0.0, 1.8, candidates.size) < rate(candidates)]
            kept.append(keep)
            total += keep.size
        times = np.concatenate(kept)[:count]
    elif kind == "bursty":
        calm = int(count * 2 / 3)
        storms = max(1, round(10 * duration / 3600))
        starts = rng.uniform(0.0, max(1.0, duration - 120.0), storms)
        storm_times = starts[rng.integers(0, storms, count - calm)] + rng.uniform(
            0.0, 120.0, count - calm
        )
        times = np.concatenate([rng.uniform(0.0, duration, calm), storm_times])
    else:
        raise ValueError(f"unknown arrivals {kind!r}: steady, diurnal or bursty")
    return np.sort(times)


def zipf_choice(count: int, models: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Model indexes by Zipf popularity: model i is drawn with weight 1 / (i + 1) ** alpha."""
    weights = 1.0 / np.arange(1, models + 1) ** alpha
    return rng.choice(models, size=count, p=weights / weights.sum()).astype(np.int32)


def generate(
    kind: str,
    *,
    requests: int,
    models: int,
    alpha: float = 1.0,
    duration: float = DAY,
    arrivals_kind: str = "steady",
    seed: int = 0,
) -> Trace:
    """``zipf``: independent requests, each for a model drawn by popularity. ``sessions``:
    agents, each on one model (by popularity) for many turns (20 on average, 15 s apart on
    average), the prompt growing with the conversation; sessions start as ``arrivals_kind``
    says."""
    rng = np.random.default_rng(seed)
    names = tuple(f"model-{i:03d}" for i in range(models))
    sizes = tuple(model_sizes(models, rng))
    if kind == "zipf":
        t = arrivals(requests, duration, arrivals_kind, rng)
        model = zipf_choice(requests, models, alpha, rng)
        prompt = rng.lognormal(math.log(800), 1.0, requests).clip(16, 60_000)
        output = rng.lognormal(math.log(200), 0.8, requests).clip(1, 4_000)
    elif kind == "sessions":
        turns = rng.geometric(1 / 20, size=max(1, requests // 20 * 2))
        ends = np.cumsum(turns)
        sessions = int(np.searchsorted(ends, requests)) + 1
        turns = turns[:sessions]
        turns[-1] -= int(ends[sessions - 1] - requests)
        starts = arrivals(sessions, duration, arrivals_kind, rng)
        session_model = zipf_choice(sessions, models, alpha, rng)
        owner = np.repeat(np.arange(sessions), turns)
        first = np.cumsum(turns) - turns  # each session's first request
        turn = np.arange(requests) - first[owner]
        gaps = rng.exponential(15.0, requests)
        gaps[turn == 0] = 0.0
        summed = np.cumsum(gaps)
        t = starts[owner] + summed - summed[first][owner]  # its start, then its gaps
        model = session_model[owner].astype(np.int32)
        prompt = (8_000 + 1_500 * turn + rng.normal(0, 300, requests)).clip(500, 120_000)
        output = rng.lognormal(math.log(300), 0.7, requests).clip(1, 4_000)
        order = np.argsort(t, kind="stable")
        t, model, prompt, output = t[order], model[order], prompt[order], output[order]
    else:
        raise ValueError(f"unknown trace {kind!r}: zipf or sessions (or a JSONL file)")
    return Trace(
        t=t.astype(np.float64),
        model=model,
        prompt_tokens=prompt.astype(np.int32),
        output_tokens=output.astype(np.int32),
        models=names,
        sizes=sizes,
    )


def read_jsonl(path: Path, seed: int = 0) -> Trace:
    """A trace from a file, one request per line. A model's memory is the first ``size_gb``
    given for it, else drawn from the size mix (the same for the same name and seed)."""
    rows: list[tuple[float, str, int, int]] = []
    sizes: dict[str, int] = {}
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                row = (
                    float(item["t"]),
                    str(item["model"]),
                    int(item["prompt_tokens"]),
                    int(item["output_tokens"]),
                )
                if "size_gb" in item:
                    sizes.setdefault(row[1], int(float(item["size_gb"]) * GB))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a request ({exc})") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda row: row[0])
    names = tuple(dict.fromkeys(row[1] for row in rows))
    for name in names:
        if name not in sizes:
            rng = np.random.default_rng(seed + zlib.crc32(name.encode()))
            sizes[name] = model_sizes(1, rng)[0]
    index = {name: i for i, name in enumerate(names)}
    start = rows[0][0]
    return Trace(
        t=np.array([row[0] - start for row in rows], dtype=np.float64),
        model=np.array([index[row[1]] for row in rows], dtype=np.int32),
        prompt_tokens=np.array([row[2] for row in rows], dtype=np.int32),
        output_tokens=np.array([row[3] for row in rows], dtype=np.int32),
        models=names,
        sizes=tuple(sizes[name] for name in names),
    )


def write_jsonl(trace: Trace, path: Path) -> None:
    with path.open("w") as out:
        for i in range(len(trace)):
            m = int(trace.model[i])
            item = {
                "t": round(float(trace.t[i]), 3),
                "model": trace.models[m],
                "prompt_tokens": int(trace.prompt_tokens[i]),
                "output_tokens": int(trace.output_tokens[i]),
                "size_gb": trace.sizes[m] / GB,
            }
            out.write(json.dumps(item) + "\n")
