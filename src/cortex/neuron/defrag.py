"""Giving memory back: allocator caches on GPUs, the C heap on the CPU.

After many loads and unloads, PyTorch's CUDA caching allocator and glibc's heap keep
freed memory for themselves; the gateway asks for this after eviction cycles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

import psutil
import torch

from cortex.neuron.devices import Device

log = logging.getLogger(__name__)


def release_caches(devices: list[Device]) -> int:
    """Collect garbage and release allocator caches; returns bytes given back."""
    gc.collect()
    freed = 0
    for device in devices:
        if device.kind == "cuda":
            with torch.cuda.device(device.index):
                before = torch.cuda.memory_reserved()
                torch.cuda.empty_cache()
                freed += max(0, before - torch.cuda.memory_reserved())
        else:
            freed += _trim_heap()
    return freed


def _trim_heap() -> int:
    process = psutil.Process()
    before = process.memory_info().rss
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return 0
    try:
        libc = ctypes.CDLL(libc_name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return 0
    trim(0)
    return max(0, int(before - process.memory_info().rss))
