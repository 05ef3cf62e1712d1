"""The neuron's live figures at scrape time: the paged KV cache and the prefix cache."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cortex.neuron.engine.stats import EngineStatus
from cortex.neuron.metrics import LiveFigures, NeuronMetrics


def _samples(metrics: NeuronMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_kv_and_prefix_cache_figures_are_scraped_per_model() -> None:
    status = EngineStatus(
        num_running=2, cached_tokens=40, kv_block_size=16, kv_blocks_total=100,
        kv_blocks_used=30, kv_blocks_cached=12, kv_cache_bytes=3 * 1024**2,
        prefix_queried_tokens=400, prefix_hit_tokens=100, prefill_tokens=320, preemptions=3,
    )  # fmt: skip
    live = [
        LiveFigures("m", running=2, waiting=1, oldest_wait=0.5, cached_tokens=40, status=status),
        LiveFigures("bare", running=0, waiting=0, oldest_wait=0.0, cached_tokens=0),
    ]
    metrics = NeuronMetrics()
    metrics.watch(lambda: live)
    samples = _samples(metrics)

    def value(name: str, model: str = "m", **labels: str) -> float:
        return samples[(name, tuple(sorted({"model": model, **labels}.items())))]

    blocks = {
        state: value("cortex_neuron_kv_blocks", state=state) for state in ("used", "cached", "free")
    }
    assert blocks == {"used": 30, "cached": 12, "free": 58}
    assert value("cortex_neuron_kv_cache_bytes") == 3 * 1024**2
    assert value("cortex_neuron_kv_block_size_tokens") == 16
    assert value("cortex_neuron_kv_cache_tokens") == 40  # kept alongside the blocks
    assert value("cortex_neuron_prefix_cache_hit_ratio") == 0.25
    assert value("cortex_neuron_prefix_cache_queried_tokens_total") == 400
    assert value("cortex_neuron_prefix_cache_hit_tokens_total") == 100
    assert value("cortex_neuron_prefill_tokens_total") == 320
    assert value("cortex_neuron_preemptions_total") == 3
    # A model whose engine reports no paged cache: zeros, not gaps, and no ratio from 0/0.
    assert value("cortex_neuron_kv_blocks", "bare", state="free") == 0
    assert value("cortex_neuron_prefix_cache_hit_ratio", "bare") == 0
    assert value("cortex_neuron_preemptions_total", "bare") == 0


def test_no_models_no_live_series() -> None:
    metrics = NeuronMetrics()
    metrics.watch(list)
    names = {name for name, _ in _samples(metrics)}
    assert not any(
        name.startswith(("cortex_neuron_kv_", "cortex_neuron_prefix_")) for name in names
    )
