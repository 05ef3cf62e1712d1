"""The last minutes of each model's traffic, from the gateway's own requests: what the web
console shows (``GET /fleet/stats``) without a Prometheus to ask.

Time is cut into ``BUCKET``-second buckets and ``SPAN`` of them are kept per model. Recording
is a few additions on the event loop (``RequestRecorder.finish`` calls it for every request);
the percentiles and rates are worked out only when someone asks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

BUCKET = 10  # seconds
SPAN = 30  # buckets: five minutes
SAMPLES = 256  # time-to-first-token samples kept per bucket (the first ones)


class Bucket:
    __slots__ = ("errors", "requests", "start", "tokens", "ttfts")

    def __init__(self, start: int) -> None:
        self.start = start  # seconds since the epoch, a multiple of BUCKET
        self.requests = 0
        self.errors = 0  # answered with a status of 400 or more
        self.tokens = 0  # generated tokens of the requests that finished in it
        self.ttfts: list[float] = []


class RecentTraffic:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._models: dict[str, deque[Bucket]] = {}

    def record(self, model: str, status: int, ttft: float | None, tokens: int) -> None:
        """A finished request: its status, time to first token (streams) and output tokens."""
        start = int(self._clock()) // BUCKET * BUCKET
        buckets = self._models.get(model)
        if buckets is None:
            buckets = self._models[model] = deque(maxlen=SPAN)
        if not buckets or buckets[-1].start != start:
            buckets.append(Bucket(start))
        bucket = buckets[-1]
        bucket.requests += 1
        if status >= 400:
            bucket.errors += 1
        bucket.tokens += tokens
        if ttft is not None and len(bucket.ttfts) < SAMPLES:
            bucket.ttfts.append(ttft)

    def view(self) -> dict[str, Any]:
        """Per model over the last ``SPAN × BUCKET`` seconds: totals, rates and TTFT
        percentiles, and a series of ``SPAN`` buckets (oldest first; quiet ones are zeros)."""
        now = int(self._clock()) // BUCKET * BUCKET
        first = now - (SPAN - 1) * BUCKET
        models: dict[str, Any] = {}
        for model, buckets in list(self._models.items()):
            live = [b for b in buckets if b.start >= first]
            if not live:
                del self._models[model]  # nothing in the window: forget it
                continue
            by_start = {b.start: b for b in live}
            series = []
            for start in range(first, now + BUCKET, BUCKET):
                b = by_start.get(start)
                series.append(
                    {
                        "t": start,
                        "requests": b.requests if b else 0,
                        "errors": b.errors if b else 0,
                        "tokens": b.tokens if b else 0,
                        "ttft_p50": _quantile(b.ttfts, 0.5) if b else None,
                    }
                )
            ttfts = sorted(t for b in live for t in b.ttfts)
            # The rates run over the time since the model's first bucket in the window (the
            # current bucket counted as far as it has gone), not the whole window.
            seconds = max(1.0, self._clock() - live[0].start)
            requests = sum(b.requests for b in live)
            models[model] = {
                "requests": requests,
                "errors": sum(b.errors for b in live),
                "requests_per_min": requests * 60 / seconds,
                "tokens_per_s": sum(b.tokens for b in live) / seconds,
                "ttft_p50": _quantile(ttfts, 0.5, ordered=True),
                "ttft_p95": _quantile(ttfts, 0.95, ordered=True),
                "series": series,
            }
        return {"bucket_s": BUCKET, "window_s": BUCKET * SPAN, "models": models}


def _quantile(values: list[float], q: float, *, ordered: bool = False) -> float | None:
    """The nearest-rank quantile, or None without values."""
    if not values:
        return None
    ranked = values if ordered else sorted(values)
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)]
