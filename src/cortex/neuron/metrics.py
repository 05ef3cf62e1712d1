"""The neuron's Prometheus metrics (``GET /metrics``), one registry per app.

Names are ``cortex_neuron_…``; the engine's queue and latency figures join these
when the engine grows them. Kept per app instance so tests can run several.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class NeuronMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_loads = Counter(
            "cortex_neuron_model_loads",
            "Model loads performed (joined concurrent requests count once), by result",
            ["model", "result"],
            registry=self.registry,
        )
        self.model_load_duration = Histogram(
            "cortex_neuron_model_load_duration_seconds",
            "Time from load start to ready",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.model_unloads = Counter(
            "cortex_neuron_model_unloads",
            "Models unloaded",
            ["model"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
