"""The neuron's Prometheus metrics (``GET /metrics``), one registry per app.

Names are ``cortex_neuron_…``, labelled by ``model``: lifecycle (loads, unloads),
what the engine did (tokens, requests by finish reason, latency histograms: TTFT,
inter-token, queue time, end to end) and what it holds now (running and waiting
sequences, the oldest wait, KV cache use — read at scrape time from the plain figures
each engine's worker publishes after every step, so a scrape never waits for a device).
Kept per app instance so tests can run several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.engine.stats import EngineStats

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(slots=True, frozen=True)
class LiveFigures:
    """What one model holds right now."""

    model: str
    running: int
    waiting: int
    oldest_wait: float
    cached_tokens: int


class _Live(Collector):
    def __init__(self, read: Callable[[], Iterable[LiveFigures]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families = {
            "running": GaugeMetricFamily(
                "cortex_neuron_requests_running", "Sequences in the batch", labels=["model"]
            ),
            "waiting": GaugeMetricFamily(
                "cortex_neuron_requests_waiting", "Sequences waiting to join", labels=["model"]
            ),
            "oldest_wait": GaugeMetricFamily(
                "cortex_neuron_queue_oldest_wait_seconds",
                "How long the first waiting sequence has waited",
                labels=["model"],
            ),
            "cached_tokens": GaugeMetricFamily(
                "cortex_neuron_kv_cache_tokens", "Tokens held in the KV cache", labels=["model"]
            ),
        }
        for figures in self._read():
            for key, family in families.items():
                family.add_metric([figures.model], float(getattr(figures, key)))
        yield from families.values()


class NeuronMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.model_loads = Counter(
            "cortex_neuron_model_loads",
            "Model loads performed (joined concurrent requests count once), by result",
            ["model", "result"],
            registry=r,
        )
        self.model_load_duration = Histogram(
            "cortex_neuron_model_load_duration_seconds",
            "Time from load start to ready",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.model_unloads = Counter(
            "cortex_neuron_model_unloads", "Models unloaded", ["model"], registry=r
        )
        self.requests = Counter(
            "cortex_neuron_requests",
            "Sequences finished, by finish reason",
            ["model", "finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "cortex_neuron_prompt_tokens", "Prompt tokens prefilled", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "cortex_neuron_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.ttft = self._histogram(
            "cortex_neuron_time_to_first_token_seconds", "Arrival to first token", LATENCY_BUCKETS
        )
        self.itl = self._histogram(
            "cortex_neuron_inter_token_latency_seconds", "Between two tokens", TOKEN_BUCKETS
        )
        self.queue_time = self._histogram(
            "cortex_neuron_queue_time_seconds", "Arrival to prefill", LATENCY_BUCKETS
        )
        self.e2e = self._histogram(
            "cortex_neuron_e2e_request_latency_seconds", "Arrival to last token", LATENCY_BUCKETS
        )

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, ["model"], buckets=buckets, registry=self.registry)

    def watch(self, read: Callable[[], Iterable[LiveFigures]]) -> None:
        """Report live figures from ``read`` at every scrape."""
        self.registry.register(_Live(read))

    def engine_stats(self, model: str) -> EngineStats:
        return _ModelStats(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelStats(EngineStats):
    """``EngineStats`` bound to one model's series (children resolved once)."""

    def __init__(self, metrics: NeuronMetrics, model: str) -> None:
        self._model = model
        self._metrics = metrics
        self._queue: Any = metrics.queue_time.labels(model)
        self._ttft: Any = metrics.ttft.labels(model)
        self._itl: Any = metrics.itl.labels(model)
        self._e2e: Any = metrics.e2e.labels(model)
        self._prompt: Any = metrics.prompt_tokens.labels(model)
        self._generated: Any = metrics.generation_tokens.labels(model)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def finished(self, seq: Sequence, now: float) -> None:
        reason = seq.finish_reason or "stop"
        self._metrics.requests.labels(self._model, reason).inc()
        if seq.first_token_time is not None:
            self._prompt.inc(seq.num_prompt_tokens)
        self._generated.inc(seq.num_completion_tokens)
        self._e2e.observe(now - seq.arrival_time)
