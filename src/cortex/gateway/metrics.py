"""The gateway's Prometheus metrics and the per-request recorder.

Names are ``cortex_…`` with ``model``, ``node`` and ``dialect`` labels where they apply.
With API keys configured, the request and token counters also carry ``key`` (the key's
name); without, their label sets are as they always were.
Lifecycle figures no peer exports (load time, cold-start wait, evictions by reason)
are first-class.

The hot path is plain arithmetic: every update happens on the event loop, so values
are ordinary floats and lists without locks (prometheus_client's own metric objects
take a lock per update, which cost a quarter of the gateway's throughput). A
``Collector`` turns them into Prometheus families at scrape time, also on the loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cortex.gateway.recent import RecentTraffic
from cortex.gateway.state import NodeState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)


class Value:
    """A counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Distribution:
    """A histogram child: per-bucket counts (not cumulative until scraped)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class ValueFamily:
    """A counter or gauge: one name, its label names, a ``Value`` per label set."""

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.label_names = labels
        self.children: dict[tuple[str, ...], Value] = {}

    def value(self, *labels: str) -> Value:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = Value()
        return child

    def collect(self) -> Metric:
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = kind(self.name, self.doc, labels=list(self.label_names))
        for key, child in self.children.items():
            family.add_metric(list(key), child.value)
        return family


class HistogramFamily:
    """A histogram: one name, its label names, a ``Distribution`` per label set."""

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name = name
        self.doc = doc
        self.label_names = labels
        self.bounds = bounds
        self.children: dict[tuple[str, ...], Distribution] = {}

    def distribution(self, *labels: str) -> Distribution:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = Distribution(self.bounds)
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.label_names))
        for key, child in self.children.items():
            running = 0
            buckets = []
            for bound, count in zip((*child.bounds, float("inf")), child.counts, strict=True):
                running += count
                buckets.append((_le(bound), running))
            family.add_metric(list(key), buckets, child.sum)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class GatewayMetrics(Collector):
    def __init__(self, keyed: bool = False) -> None:
        self.families: list[ValueFamily | HistogramFamily] = []
        add, hist = self._values, self._histogram
        model_node = ("model", "node")
        everything = ("model", "node", "dialect")
        self.keyed = keyed  # the request and token counters carry ``key``
        key: tuple[str, ...] = ("key",) if keyed else ()
        self.requests = add(
            "counter",
            "cortex_requests",
            "Requests by final HTTP status",
            (*everything, "status", *key),
        )
        self.ttft = hist(
            "cortex_time_to_first_token_seconds",
            "Arrival to first generated token (streams)",
            everything,
            LATENCY_BUCKETS,
        )
        self.itl = hist(
            "cortex_inter_token_latency_seconds",
            "Time between streamed chunks",
            model_node,
            TOKEN_BUCKETS,
        )
        self.duration = hist(
            "cortex_request_duration_seconds", "Arrival to last byte", everything, LATENCY_BUCKETS
        )
        self.queue_time = hist(
            "cortex_queue_time_seconds",
            "Arrival to dispatch to a neuron (routing, cold starts)",
            ("model", "dialect"),
            LATENCY_BUCKETS,
        )
        self.prompt_tokens = add(
            "counter",
            "cortex_prompt_tokens",
            "Prompt tokens, as the neuron counted them",
            (*model_node, *key),
        )
        self.generation_tokens = add(
            "counter",
            "cortex_generation_tokens",
            "Generated tokens, as the neuron counted them",
            (*model_node, *key),
        )
        self.tokens_per_second = hist(
            "cortex_generation_tokens_per_second",
            "Per request: generated tokens / decode time",
            model_node,
            RATE_BUCKETS,
        )
        self.in_flight = add(
            "gauge", "cortex_requests_in_flight", "Requests being served or waiting", ("model",)
        )
        self.load_duration = hist(
            "cortex_model_load_duration_seconds",
            "Load decision to model ready (evictions included); kind: load, or wake from sleep",
            (*model_node, "kind"),
            LOAD_BUCKETS,
        )
        self.cold_start_wait = hist(
            "cortex_cold_start_wait_seconds",
            "What a request waited for its model to load",
            ("model",),
            LOAD_BUCKETS,
        )
        self.loads = add(
            "counter",
            "cortex_model_loads",
            "Model loads started by the gateway, by result",
            (*model_node, "result"),
        )
        self.evictions = add(
            "counter",
            "cortex_evictions",
            "Models unloaded by the gateway, by reason",
            (*model_node, "reason"),
        )
        self.node_up = add("gauge", "cortex_node_up", "1 when the neuron answers", ("node",))
        self.node_memory = add(
            "gauge",
            "cortex_node_memory_bytes",
            "Neuron memory (summed over devices)",
            ("node", "kind"),
        )
        self.recent = RecentTraffic()  # the last minutes per model, for the web console
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _values(self, kind: str, name: str, doc: str, labels: tuple[str, ...]) -> ValueFamily:
        family = ValueFamily(kind, name, doc, labels)
        self.families.append(family)
        return family

    def _histogram(
        self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> HistogramFamily:
        family = HistogramFamily(name, doc, labels, bounds)
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record_node(self, node: NodeState) -> None:
        self.node_up.value(node.name).set(1 if node.up else 0)
        if node.status is None:
            return
        devices = node.status.devices
        figures = {
            "total": sum(d.memory_total for d in devices),
            "free": sum(d.memory_free for d in devices),
            "used_by_models": sum(d.memory_used_by_models for d in devices),
            "budget": sum(d.memory_budget or d.memory_total for d in devices),
        }
        for kind, value in figures.items():
            self.node_memory.value(node.name, kind).set(value)


class RequestRecorder:
    """One request's figures; cheap enough to create per request. ``key``: the name of the
    request's API key, when the gateway has keys."""

    __slots__ = ("_dialect", "_first", "_key", "_last", "_m", "model", "node", "start")

    def __init__(
        self, metrics: GatewayMetrics, model: str, dialect: str, key: str | None = None
    ) -> None:
        self._m = metrics
        self.model = model
        self._dialect = dialect
        self._key: tuple[str, ...] = (key or "",) if metrics.keyed else ()
        self.node = ""
        self.start = time.perf_counter()
        self._first: float | None = None
        self._last = 0.0
        metrics.in_flight.value(model).inc()

    def dispatched(self, node: str) -> None:
        self.node = node
        elapsed = time.perf_counter() - self.start
        self._m.queue_time.distribution(self.model, self._dialect).observe(elapsed)

    def cold_start(self, waited: float) -> None:
        self._m.cold_start_wait.distribution(self.model).observe(waited)

    def chunk(self) -> None:
        """A streamed event carrying generated output arrived."""
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            ttft = self._m.ttft.distribution(self.model, self.node, self._dialect)
            ttft.observe(now - self.start)
        else:
            self._m.itl.distribution(self.model, self.node).observe(now - self._last)
        self._last = now

    def finish(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        now = time.perf_counter()
        m, model, node, dialect, key = self._m, self.model, self.node, self._dialect, self._key
        m.in_flight.value(model).dec()
        m.requests.value(model, node, dialect, str(status), *key).inc()
        m.duration.distribution(model, node, dialect).observe(now - self.start)
        ttft = None if self._first is None else self._first - self.start
        m.recent.record(model, status, ttft, completion_tokens)
        if prompt_tokens:
            m.prompt_tokens.value(model, node, *key).inc(prompt_tokens)
        if completion_tokens:
            m.generation_tokens.value(model, node, *key).inc(completion_tokens)
            decode_start = self._first if self._first is not None else self.start
            if now > decode_start:
                rate = completion_tokens / (now - decode_start)
                m.tokens_per_second.distribution(model, node).observe(rate)
