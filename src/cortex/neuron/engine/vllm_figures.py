"""vLLM's own figures (KV cache use, prefix cache hits, preemptions) as cortex's
``EngineStatus``, so that the record, ``cortex status`` and the ``cortex_neuron_…`` series
read the same on both engines.

vLLM hands its scheduler's figures to stat loggers after each step it reports, on the
event loop (``AsyncLLM``'s output handler); ``stat_logger`` makes one that keeps them here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cortex.neuron.engine.stats import EngineStatus


class VllmFigures:
    """The latest of vLLM's scheduler figures, and the prefix cache's since load."""

    def __init__(self) -> None:
        self.block_size = 0
        self.blocks_total = 0
        self.usage = 0.0  # the share of KV blocks in use
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.prompt_tokens = 0

    def record(self, scheduler: Any, iteration: Any) -> None:
        if scheduler is not None:
            self.usage = float(scheduler.kv_cache_usage)
            prefix = scheduler.prefix_cache_stats
            if prefix is not None:
                self.prefix_queries += int(prefix.queries)
                self.prefix_hits += int(prefix.hits)
        if iteration is not None:
            self.preemptions += int(getattr(iteration, "num_preempted_reqs", 0))
            self.prompt_tokens += int(getattr(iteration, "num_prompt_tokens", 0))

    def status(
        self,
        *,
        num_running: int,
        num_waiting: int,
        oldest_arrival: float | None,
        kv_cache_bytes: int,
    ) -> EngineStatus:
        used = round(self.usage * self.blocks_total)
        return EngineStatus(
            num_running=num_running,
            num_waiting=num_waiting,
            cached_tokens=used * self.block_size,
            oldest_arrival=oldest_arrival,
            kv_block_size=self.block_size,
            kv_blocks_total=self.blocks_total,
            kv_blocks_used=used,
            kv_cache_bytes=kv_cache_bytes,
            prefix_queried_tokens=self.prefix_queries,
            prefix_hit_tokens=self.prefix_hits,
            prefill_tokens=max(0, self.prompt_tokens - self.prefix_hits),
            preemptions=self.preemptions,
        )


def stat_logger(figures: VllmFigures) -> Callable[..., Any]:
    """A vLLM stat-logger class whose loggers keep their figures in ``figures``.

    It passes for vLLM's Prometheus logger (whose ``__init__`` it does not run), so vLLM
    adds no Prometheus logger of its own: cortex exports these figures under its own names,
    and vLLM's would cost a few Prometheus updates on the event loop every step."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class _Keeper(PrometheusStatLogger):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_indexes: Any = None) -> None:
            cache = vllm_config.cache_config
            figures.block_size = int(cache.block_size or 0)
            figures.blocks_total = int(cache.num_gpu_blocks or 0)

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            figures.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def record_admission_rejection(self, reason: str) -> None:
            pass

    return _Keeper
