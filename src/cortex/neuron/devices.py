"""What this host can compute on: CUDA GPUs (NVML, else torch.cuda) or the CPU.

Owns device discovery and memory figures. NVML reads memory without creating a
CUDA context; GPUs are matched to torch's indexes by UUID, so CUDA_VISIBLE_DEVICES
and PCI ordering cannot mix them up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import psutil
import torch

log = logging.getLogger(__name__)

# On a CPU-only host the default budget leaves room for the OS and everything else.
CPU_DEFAULT_SHARE = 0.5
# On a GPU, keep some memory for the CUDA context, activations and the KV cache.
GPU_DEFAULT_SHARE = 0.9


@dataclass(slots=True, frozen=True)
class Device:
    index: int
    kind: Literal["cuda", "cpu"]
    name: str
    nvml_handle: Any = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.index) if self.kind == "cuda" else torch.device("cpu")

    @property
    def label(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else "cpu"

    def memory(self) -> tuple[int, int]:
        """(total, free) bytes right now."""
        if self.kind == "cpu":
            vm = psutil.virtual_memory()
            return int(vm.total), int(vm.available)
        if self.nvml_handle is not None:
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(self.nvml_handle)
            return int(info.total), int(info.free)
        free, total = torch.cuda.mem_get_info(self.index)
        return int(total), int(free)

    def default_budget(self) -> int:
        total, _ = self.memory()
        share = CPU_DEFAULT_SHARE if self.kind == "cpu" else GPU_DEFAULT_SHARE
        return int(total * share)


def discover() -> list[Device]:
    """The CUDA devices torch can use, else the CPU alone."""
    if not torch.cuda.is_available():
        return [_cpu()]
    handles = _nvml_handles_by_uuid()
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", "")).removeprefix("GPU-")
        devices.append(Device(index, "cuda", props.name, handles.get(uuid)))
    return devices


def _cpu() -> Device:
    import platform

    name = platform.processor() or platform.machine() or "cpu"
    return Device(0, "cpu", f"{name} ({psutil.cpu_count(logical=True)} threads)")


def _nvml_handles_by_uuid() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            handles[uuid.removeprefix("GPU-")] = handle
        return handles
    except Exception as exc:  # NVML missing or broken: torch.cuda figures still work
        log.info("NVML unavailable (%s); using torch.cuda for memory figures", exc)
        return {}
