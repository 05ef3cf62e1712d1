"""A tiny model whose free output is random tokens: the untrained Qwen3 fixture with its output
head untied from the embeddings and drawn at random (seeded).

The plain untrained fixture ties its head to its embeddings, so it mostly repeats the last token
(a JSON string of ``0000…`` that never closes). Structured-output tests want a model that writes
anything at all, so that only the grammar makes the output valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from cortex.testing.model import (
    cache_key,
    cached_folder,
    cached_model,
    save_model,
    write_atomically,
)

__all__ = ["cached_random_model"]

_SEED = 20261202
_SCALE = 4.0  # the head's logits spread (std) over the vocabulary: random, not uniform


def build_random_model(out_dir: Path, source: Path) -> Path:
    def write(staging: Path) -> None:
        model: Any = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True)
        model.config.tie_word_embeddings = False
        generator = torch.Generator().manual_seed(_SEED)
        hidden = model.config.hidden_size
        weight = torch.randn(model.config.vocab_size, hidden, generator=generator)
        model.lm_head.weight = torch.nn.Parameter(weight * _SCALE / hidden**0.5)
        save_model(model, staging)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (source / name).is_file():
                (staging / name).write_bytes((source / name).read_bytes())

    return write_atomically(out_dir, write)


def cached_random_model(cache_dir: Path | None = None) -> Path:
    """The random-output model folder, built once per machine beside the other fixtures."""
    source = cached_model(trained=False, cache_dir=cache_dir)
    key = cache_key(trained=False, context_length=0, head_dim=0)
    return cached_folder(
        cache_dir, f"random-{_SEED}-{key}", lambda t: build_random_model(t, source)
    )
