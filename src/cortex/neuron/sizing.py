"""How much of the machine a model gets: its KV cache's memory and its CPU threads.

**KV memory** (``kv_budget``): the load's ``kv_cache_bytes``, else the neuron's, else
``kv_cache_fraction`` of what the device budget has left once the weights are in; the
engine then takes no more than ``max_num_seqs`` full contexts need. An explicit size that
does not fit is a 507.

**Threads** (``default_cpu_threads``): every usable core but one; the core left over
runs the event loop, tokenizing, detokenizing and streaming (vLLM's CPU backend reserves
one the same way). Measured with ``bench/engine.py`` at 16 streams on a 2-core host, one
thread against two: the tiny model 5,033 vs 2,571 tok/s, 10.7M parameters 737 vs 545,
56M 212 vs 200, 152M 97 vs 95, a 0.44B Qwen3 shape 30.8/30.1 vs 28.1/32.4. The second
thread was never faster at any size (decode is memory-bound here, and the threads contend
with the server), and it halves a small model's speed.
"""

from __future__ import annotations

import os

from cortex.config import NeuronConfig
from cortex.errors import InsufficientMemory
from cortex.protocol.lifecycle import LoadRequest


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """Torch threads when ``cpu_threads`` is unset: every usable core but one."""
    return max(1, usable_cores() - 1)


def kv_budget(request: LoadRequest, config: NeuronConfig, free: int, device: str) -> int:
    """The KV cache's bytes for a load, given what the budget has ``free`` after its weights."""
    explicit = request.kv_cache_bytes
    if explicit is None:
        explicit = config.kv_cache_bytes
    if explicit is None:
        return int(max(0, free) * config.kv_cache_fraction)
    if explicit > free:
        raise InsufficientMemory(
            f"Not enough memory for a KV cache of {explicit} bytes for {request.model!r} "
            f"on {device}: {max(0, free)} bytes free within the budget after the weights",
            extra={"needed_bytes": explicit, "free_bytes": max(0, free), "device": device},
        )
    return explicit
