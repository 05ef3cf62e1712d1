"""How much of the machine a model gets: its KV cache's memory and its CPU threads.

**KV memory** (``kv_budget``): the load's ``kv_cache_bytes``, else the neuron's, else
``kv_cache_fraction`` of what the device budget has left once the weights are in; the
engine then takes no more than ``max_num_seqs`` full contexts need. An explicit size that
does not fit is a 507.

**Threads** (``cpu_threads``): a small model's step is mostly Python and small tensor
ops, where a second torch thread only contends with the event loop (tokenizing,
detokenizing, streaming) and slows it (``bench/engine.py``: the tiny model at 16 streams
on 2 cores). A large model's step is matrix work that scales with cores: a 0.44B Qwen3
shape at 16 streams on 2 cores gave 36 tok/s with one thread and 63 with two. So by
default a model of ``ALL_CORES_FROM_PARAMS`` parameters or more gets every usable core, a
smaller one every core but one; the device worker sets the count before each model's
step.
"""

from __future__ import annotations

import os

from cortex.config import NeuronConfig
from cortex.errors import InsufficientMemory
from cortex.protocol.lifecycle import LoadRequest

ALL_CORES_FROM_PARAMS = 20_000_000


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_threads(num_params: int, configured: int | None = None) -> int:
    """``configured`` when set, else by the model's size (see the module's note)."""
    if configured is not None:
        return configured
    cores = usable_cores()
    return cores if num_params >= ALL_CORES_FROM_PARAMS else max(1, cores - 1)


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
