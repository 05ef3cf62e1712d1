"""Starting one model on vLLM: its engine arguments from cortex's load, then ``AsyncLLM``.

Blocking (vLLM spawns its engine core and loads the weights there, 20–45 s for a tiny model
on a CPU): the registry runs ``start`` off the event loop. Importing this module imports
vLLM, so only ``neuron.engines`` does, once it has chosen vLLM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# vLLM's INFO lines are its own progress report; a neuron's log keeps to warnings.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from cortex.neuron.engine.stats import EngineStats
from cortex.neuron.engine.vllm_figures import VllmFigures, stat_logger
from cortex.neuron.engine.vllm_harness import VllmHarness


@dataclass(slots=True)
class VllmLoad:
    """What cortex decided about one model's engine."""

    path: Path
    device_kind: str  # "cuda" | "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16"
    max_model_len: int
    kv_cache_bytes: int
    max_num_seqs: int
    max_prefill_tokens: int
    prefix_caching: bool
    tp: int = 1
    quant: str | None = None
    sleep_mode: bool = False
    # The operator's own engine arguments (neuron.toml ``vllm_args``); they win.
    extra: dict[str, Any] = field(default_factory=dict)


def engine_args(load: VllmLoad) -> AsyncEngineArgs:
    args: dict[str, Any] = {
        "model": str(load.path),
        "tokenizer": str(load.path),
        "dtype": load.dtype,
        "max_model_len": load.max_model_len,
        "kv_cache_memory_bytes": load.kv_cache_bytes,
        "max_num_seqs": load.max_num_seqs,
        "max_num_batched_tokens": max(load.max_prefill_tokens, load.max_num_seqs),
        "enable_prefix_caching": load.prefix_caching,
        "tensor_parallel_size": load.tp,
        "quantization": load.quant,
        "enable_sleep_mode": load.sleep_mode,
        # cortex reports vLLM's figures itself (VllmFigures), under its own names.
        "disable_log_stats": True,
        # On a CPU, compiling the model costs more start time than it saves.
        "enforce_eager": load.device_kind == "cpu",
        # cortex's grammars (``neuron.structured``) are llguidance's Lark: vLLM's guidance
        # backend runs them as they are, so both engines hold a reply to the same grammar.
        "structured_outputs_config": StructuredOutputsConfig(backend="guidance"),
    }
    args.update(load.extra)
    return AsyncEngineArgs(**args)


def start(
    load: VllmLoad,
    *,
    vocab_size: int | None,
    max_queue: int,
    stats: EngineStats,
    name: str,
) -> VllmHarness:
    """Start the engine (blocking) and wrap it in a harness."""
    figures = VllmFigures()
    engine = AsyncLLM.from_engine_args(engine_args(load), stat_loggers=[stat_logger(figures)])
    cache = engine.vllm_config.cache_config
    figures.block_size = int(cache.block_size or 0)
    figures.blocks_total = int(cache.num_gpu_blocks or 0) or figures.blocks_total
    model_len = int(engine.vllm_config.model_config.max_model_len)
    return VllmHarness(
        engine,
        figures,
        max_model_len=model_len,
        vocab_size=vocab_size,
        kv_cache_bytes=load.kv_cache_bytes,
        max_queue=max_queue,
        stats=stats,
        name=name,
        sleep_mode=load.sleep_mode,
    )
