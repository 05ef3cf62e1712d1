"""Bringing a model up on its engine once the registry has checked its memory: the
weights (or, for vLLM, what cortex needs beside them), the KV cache's share of the budget,
and the harness that generates (or, for a sentence-embedding model, that embeds).

Blocking parts go to threads; the registry calls ``start_model`` on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cortex.config import NeuronConfig
from cortex.errors import InsufficientMemory
from cortex.neuron import engines, loader
from cortex.neuron.devices import Device
from cortex.neuron.embedding.harness import EmbeddingHarness
from cortex.neuron.embedding.spec import EmbeddingSpec, read_spec
from cortex.neuron.engine.base import Harness
from cortex.neuron.engine.harness import TransformersHarness
from cortex.neuron.engine.stats import EngineStats
from cortex.neuron.engine.vllm_harness import VllmHarness
from cortex.neuron.engine.worker import DeviceWorker
from cortex.neuron.loader import LoadedWeights
from cortex.neuron.sizing import kv_budget
from cortex.protocol.lifecycle import LoadRequest, ModelType

Progress = Callable[..., None]


@dataclass(slots=True)
class Started:
    weights: LoadedWeights
    harness: Harness
    engine: engines.Engine
    kv_cache_bytes: int
    context_length: int
    read_seconds: float | None = None  # how long reading the weights took (not for vLLM)
    type: ModelType = "chat"


async def start_model(
    engine: engines.Engine,
    *,
    model_id: str,
    path: Path,
    device: Device,
    dtype: torch.dtype,
    needed: int,
    budget_left: Callable[[], int],
    request: LoadRequest,
    config: NeuronConfig,
    stats: EngineStats,
    worker: Callable[[], DeviceWorker],
    progress: Progress,
) -> Started:
    """Start ``model_id`` on ``engine``; ``budget_left()``: what the device's budget has
    left besides this model (its weights not counted yet)."""
    if engine == "vllm":
        return await _start_vllm(
            model_id, path, device, dtype, needed, budget_left(), request, config, stats, progress
        )
    spec = await asyncio.to_thread(read_spec, path)
    if spec is not None:
        return await _start_embedding(model_id, path, spec, device, dtype, config, stats, worker)
    begun = time.monotonic()
    weights = await asyncio.to_thread(loader.load_weights, path, device, dtype)
    read_seconds = time.monotonic() - begun
    try:
        free = budget_left() - weights.memory_bytes
        kv_cache_bytes = kv_budget(request, config, free, device.label)
        progress("loading", f"a KV cache of up to {kv_cache_bytes} bytes", needed)
        harness = await asyncio.to_thread(
            TransformersHarness,
            weights.model,
            device.torch_device,
            worker(),
            max_model_len=weights.context_length,
            max_num_seqs=config.max_num_seqs,
            max_queue=config.max_queue,
            max_prefill_tokens=config.max_prefill_tokens,
            kv_cache_bytes=kv_cache_bytes,
            block_size=config.kv_block_size,
            prefix_caching=config.prefix_caching,
            stats=stats,
            name=model_id,
        )
    except BaseException:
        await asyncio.to_thread(loader.free, weights, device)
        raise
    return Started(
        weights, harness, engine, harness.kv_cache_bytes, harness.max_model_len, read_seconds
    )


async def _start_embedding(
    model_id: str,
    path: Path,
    spec: EmbeddingSpec,
    device: Device,
    dtype: torch.dtype,
    config: NeuronConfig,
    stats: EngineStats,
    worker: Callable[[], DeviceWorker],
) -> Started:
    """A sentence-embedding model: the bare model (no LM head) and no KV cache."""
    begun = time.monotonic()
    weights = await asyncio.to_thread(loader.load_weights, path, device, dtype, head=False)
    read_seconds = time.monotonic() - begun
    try:
        weights.context_length = min(
            weights.context_length, spec.max_seq_length or weights.context_length
        )
        pad_id = weights.tokenizer.pad_token_id
        harness = EmbeddingHarness(
            weights.model,
            spec,
            device.torch_device,
            worker(),
            pad_id=pad_id if isinstance(pad_id, int) else 0,  # masked out: any id will do
            max_batch_tokens=config.max_prefill_tokens,
            max_batch_size=config.max_num_seqs,
            max_queue=config.max_queue,
            stats=stats,
            name=model_id,
        )
    except BaseException:
        await asyncio.to_thread(loader.free, weights, device)
        raise
    return Started(
        weights, harness, "transformers", 0, weights.context_length, read_seconds, "embedding"
    )


async def _start_vllm(
    model_id: str,
    path: Path,
    device: Device,
    dtype: torch.dtype,
    needed: int,
    free: int,
    request: LoadRequest,
    config: NeuronConfig,
    stats: EngineStats,
    progress: Progress,
) -> Started:
    weights = await asyncio.to_thread(loader.load_metadata, path, dtype, needed)
    kv_cache_bytes = kv_budget(request, config, free - needed, device.label)
    model_config = engines.read_config(path)
    per_token = engines.kv_bytes_per_token(model_config, dtype.itemsize)
    context = weights.context_length
    if per_token:
        # No more than max_num_seqs full contexts need, and a context the cache can hold in
        # vLLM's whole blocks (128 tokens on a CPU, 16 on CUDA, unless vllm_args say), less
        # the one its block pool keeps as the null block (else vLLM refuses to start).
        kv_cache_bytes = min(kv_cache_bytes, config.max_num_seqs * context * per_token)
        block = int(config.vllm_args.get("block_size") or (128 if device.kind == "cpu" else 16))
        context = min(context, (kv_cache_bytes // per_token // block - 1) * block)
    if context < 1:
        raise InsufficientMemory(
            f"A KV cache of {kv_cache_bytes} bytes holds not one token of {model_id!r}",
            extra={"needed_bytes": per_token, "free_bytes": kv_cache_bytes, "device": device.label},
        )
    progress("loading", f"starting vLLM with a KV cache of {kv_cache_bytes} bytes", needed)
    # vLLM's engine modules take seconds to import: not on the event loop, which must keep
    # answering /node (the gateway's polls) and other models' requests meanwhile.
    await asyncio.to_thread(importlib.import_module, "cortex.neuron.engine.vllm_start")
    from cortex.neuron.engine import vllm_start

    load = vllm_start.VllmLoad(
        path=path,
        device_kind=device.kind,
        dtype=str(dtype).removeprefix("torch."),
        max_model_len=context,
        kv_cache_bytes=kv_cache_bytes,
        max_num_seqs=config.max_num_seqs,
        max_prefill_tokens=config.max_prefill_tokens,
        prefix_caching=config.prefix_caching,
        tp=request.tp,
        quant=None if request.quant in (None, "none") else request.quant,
        sleep_mode=device.kind == "cuda",
        extra=dict(config.vllm_args),
    )

    def start() -> VllmHarness:
        with engines.visible_gpus(device, request.tp):
            return vllm_start.start(
                load,
                vocab_size=_vocab_size(model_config, weights),
                max_queue=config.max_queue,
                stats=stats,
                name=model_id,
            )

    starting = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        harness = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The load was given up while vLLM started: shut it down once it has.
        starting.add_done_callback(_shut_down_late)
        raise
    return Started(weights, harness, "vllm", harness.kv_cache_bytes, harness.max_model_len)


def _vocab_size(config: dict[str, object], weights: LoadedWeights) -> int:
    size = config.get("vocab_size")
    return size if isinstance(size, int) and size > 0 else len(weights.tokenizer)


def _shut_down_late(task: asyncio.Future[VllmHarness]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    asyncio.get_running_loop().create_task(task.result().aclose())
