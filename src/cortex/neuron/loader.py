"""Putting one model folder into memory: tokenizer, weights, generation defaults.

Blocking torch/transformers work; the registry runs it off the event loop.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cortex.errors import ModelLoadFailed
from cortex.neuron.devices import Device
from cortex.neuron.prompt import ChatTemplate
from cortex.neuron.structured.matcher import Grammars

# from_pretrained builds models on the meta device by patching process-wide state, so two
# loads on two threads at once corrupt each other ("Cannot copy out of meta tensor",
# tied weights reported missing). Loads therefore take turns.
_FROM_PRETRAINED = threading.Lock()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class LoadedWeights:
    model: Any
    tokenizer: Any
    dtype: torch.dtype
    memory_bytes: int
    context_length: int
    eos_token_ids: frozenset[int]
    # The chat template, what it accepts, and the model's reasoning/tool-call format.
    template: ChatTemplate
    # Sampling defaults from generation_config.json that apply when a request is silent.
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    # Structured outputs' grammars for this model (its llguidance tokenizer built at first use).
    grammars: Grammars = field(init=False)

    def __post_init__(self) -> None:
        self.grammars = Grammars(self.tokenizer, self.eos_token_ids)


def choose_dtype(name: str, device: Device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where bf16 is unsupported), float32 on CPU."""
    if name != "auto":
        return _DTYPES[name]
    if device.kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class TokenizerCache:
    """Tokenizers read for models that are not loaded (``/tokenize``), the last few kept.
    Blocking and thread-safe."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._cached: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> Any:
        with self._lock:
            if path in self._cached:
                return self._cached[path]
        try:
            tokenizer = load_tokenizer(path)
        except Exception as exc:  # a folder whose tokenizer does not load: say why
            raise ModelLoadFailed(
                f"Reading the tokenizer from {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            if len(self._cached) >= self._keep:
                self._cached.pop(next(iter(self._cached)))
            return self._cached.setdefault(path, tokenizer)


def load_weights(
    path: Path, device: Device, dtype: torch.dtype, *, head: bool = True
) -> LoadedWeights:
    """``head=False``: the bare model without its language-model head (``AutoModel``), as
    sentence-embedding models are run."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # A daemon's log is no place for progress bars.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    tokenizer = load_tokenizer(path)
    auto: Any = AutoModelForCausalLM if head else AutoModel
    with _FROM_PRETRAINED:
        model: Any = auto.from_pretrained(
            str(path), dtype=dtype, local_files_only=True, low_cpu_mem_usage=True
        )
    model.to(device.torch_device)
    model.eval()
    memory = sum(t.numel() * t.element_size() for t in model.parameters())
    memory += sum(t.numel() * t.element_size() for t in model.buffers())
    return LoadedWeights(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        memory_bytes=memory,
        context_length=context_length(model.config, tokenizer),
        eos_token_ids=eos_ids(model.config, getattr(model, "generation_config", None), tokenizer),
        template=ChatTemplate.of(tokenizer),
        sampling_defaults=sampling_defaults(path),
    )


def load_metadata(path: Path, dtype: torch.dtype, memory_bytes: int) -> LoadedWeights:
    """Everything but the weights (an engine of its own reads those): the tokenizer, the
    template, the end-of-sequence ids, the context, the sampling defaults."""
    from transformers import AutoConfig, GenerationConfig

    tokenizer = load_tokenizer(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    generation: Any = None
    with contextlib.suppress(OSError, ValueError):
        generation = GenerationConfig.from_pretrained(str(path), local_files_only=True)
    return LoadedWeights(
        model=None,
        tokenizer=tokenizer,
        dtype=dtype,
        memory_bytes=memory_bytes,
        context_length=context_length(config, tokenizer),
        eos_token_ids=eos_ids(config, generation, tokenizer),
        template=ChatTemplate.of(tokenizer),
        sampling_defaults=sampling_defaults(path),
    )


def free(weights: LoadedWeights, device: Device) -> None:
    """Drop the model's tensors and give cached device memory back."""
    weights.model = None
    gc.collect()
    if device.kind == "cuda":
        with torch.cuda.device(device.index):
            torch.cuda.empty_cache()


def context_length(config: Any, tokenizer: Any) -> int:
    text_config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def eos_ids(config: Any, generation_config: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (generation_config, config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def sampling_defaults(path: Path) -> dict[str, Any]:
    """The model author's sampling defaults (as vLLM applies them) from generation_config.json.

    ``do_sample: false`` makes greedy the default.
    """
    file = path / "generation_config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    defaults = {
        key: config[key]
        for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        if isinstance(config.get(key), int | float) and not isinstance(config.get(key), bool)
    }
    if config.get("do_sample") is False:
        defaults["temperature"] = 0.0
    return defaults
