"""The neuron's Prometheus metrics (``GET /metrics``), one registry per app.

Names are ``cortex_neuron_…``, labelled by ``model``: lifecycle (loads, unloads),
what the engine did (tokens, requests by finish reason, latency histograms: TTFT,
inter-token, queue time, end to end) and what it holds now (running and waiting
sequences, the oldest wait, the paged KV cache's blocks and memory, the prefix cache's
hits, preemptions — read at scrape time from the plain figures each engine's worker
publishes after every step, so a scrape never waits for a device). Kept per app instance
so tests can run several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.engine.stats import EngineStats, EngineStatus

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(slots=True, frozen=True)
class LiveFigures:
    """What one model holds right now; ``status`` (as of the engine's last step) carries
    its KV cache's figures and the cumulative prefix-cache and preemption counts."""

    model: str
    running: int
    waiting: int
    oldest_wait: float
    cached_tokens: int
    status: EngineStatus = field(default_factory=EngineStatus)


# Counters read from the engine's cumulative figures: (name without _total, help, field).
_COUNTERS = (
    (
        "cortex_neuron_prefix_cache_queried_tokens",
        "Prompt tokens looked up in the prefix cache",
        "prefix_queried_tokens",
    ),
    (
        "cortex_neuron_prefix_cache_hit_tokens",
        "Prompt tokens found in the prefix cache (their KV reused, not computed)",
        "prefix_hit_tokens",
    ),
    (
        "cortex_neuron_prefill_tokens",
        "Prompt tokens computed (recomputations after preemption included)",
        "prefill_tokens",
    ),
    (
        "cortex_neuron_preemptions",
        "Sequences preempted for lack of KV cache blocks",
        "preemptions",
    ),
)


class _Live(Collector):
    def __init__(self, read: Callable[[], Iterable[LiveFigures]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        live = list(self._read())
        yield from self._gauges(live)
        yield from self._kv(live)

    @staticmethod
    def _gauges(live: list[LiveFigures]) -> Iterator[Metric]:
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
        for figures in live:
            for key, family in families.items():
                family.add_metric([figures.model], float(getattr(figures, key)))
        yield from families.values()

    @staticmethod
    def _kv(live: list[LiveFigures]) -> Iterator[Metric]:
        blocks = GaugeMetricFamily(
            "cortex_neuron_kv_blocks",
            "KV cache blocks: used by live sequences, cached (free, holding a reusable "
            "prefix), free",
            labels=["model", "state"],
        )
        memory = GaugeMetricFamily(
            "cortex_neuron_kv_cache_bytes", "Memory of the KV cache", labels=["model"]
        )
        block_size = GaugeMetricFamily(
            "cortex_neuron_kv_block_size_tokens", "Tokens per KV cache block", labels=["model"]
        )
        ratio = GaugeMetricFamily(
            "cortex_neuron_prefix_cache_hit_ratio",
            "Share of prompt tokens found in the prefix cache since load",
            labels=["model"],
        )
        counters = [
            (CounterMetricFamily(name, doc, labels=["model"]), key) for name, doc, key in _COUNTERS
        ]
        for figures in live:
            s, model = figures.status, figures.model
            free = max(0, s.kv_blocks_total - s.kv_blocks_used - s.kv_blocks_cached)
            for state, count in (("used", s.kv_blocks_used), ("cached", s.kv_blocks_cached)):
                blocks.add_metric([model, state], float(count))
            blocks.add_metric([model, "free"], float(free))
            memory.add_metric([model], float(s.kv_cache_bytes))
            block_size.add_metric([model], float(s.kv_block_size))
            ratio.add_metric([model], s.prefix_hit_ratio)
            for family, key in counters:
                family.add_metric([model], float(getattr(s, key)))
        yield from (blocks, memory, block_size, ratio)
        yield from (family for family, _ in counters)


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
            "Time from load start to ready; kind: load (from disk) or wake (from sleep)",
            ["model", "kind"],
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

    def embedded(self, inputs: int, tokens: int, seconds: float) -> None:
        # Each input is a sequence that ends once embedded: finish_reason "embedded".
        self._metrics.requests.labels(self._model, "embedded").inc(inputs)
        self._prompt.inc(tokens)
        self._e2e.observe(seconds)
