"""The transformers peers of ``bench/engine.py``, measured inside the benchmark's process.

``Peers.sequential``: one ``generate`` per request, one request after another (what a naive
server does). ``Peers.static_batch``: one ``generate`` over a batch of N prompts, left-padded
(the batching ceiling on the hardware). Both decode greedily with ``min_new_tokens`` equal to
``max_new_tokens``, so every request generates exactly the asked number of tokens; the output
shapes are checked. Each figure follows one untimed warm-up of the same shape, and repeats
its unit (the N requests, the one batch) until ``min_seconds`` have passed.

``Peers.distinct_batch``: one ``generate`` over a batch of different prompts (left-padded to
the longest), timed once: the padded-batch peer of ``bench/engine.py --mixed``.

``build_shaped_model`` writes a randomly initialised Qwen3 of Qwen3-0.6B's shape with the tiny
model's tokenizer files beside it: with the tiny vocabulary that is 0.44B parameters.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

PROMPT = "Write a short poem about the sea."
MESSAGES = [{"role": "user", "content": PROMPT}]
WARMUP_TOKENS = 8

# Qwen3-0.6B's shape; the vocabulary stays the tiny tokenizer's (0.44B parameters in all).
SHAPE_0_44B: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "max_position_embeddings": 65536,
}


class PeerError(RuntimeError):
    """transformers did not generate what was asked."""


class Peers:
    """One model loaded with transformers on ``device``; generated tokens/s of both peers."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        self.model.eval()
        self.text = self.tokenizer.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=True
        )
        self.prompt_tokens = len(self.tokenizer(self.text, add_special_tokens=False).input_ids)
        eos = self.model.generation_config.eos_token_id
        self.eos = eos if eos is not None else self.tokenizer.eos_token_id
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.eos[0] if isinstance(self.eos, list) else self.eos
        self.pad = pad
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = pad

    @property
    def parameters(self) -> int:
        return int(self.model.num_parameters())

    def sequential(self, n: int, tokens: int, min_seconds: float) -> float:
        """Generated tokens/s of ``n`` single-prompt ``generate`` calls in a row."""
        self._generate(1, min(tokens, WARMUP_TOKENS))

        def one_after_another() -> None:
            for _ in range(n):
                self._generate(1, tokens)

        return tokens_per_s(one_after_another, n * tokens, min_seconds)

    def static_batch(self, n: int, tokens: int, min_seconds: float) -> float:
        """Generated tokens/s of one ``generate`` call over a batch of ``n`` prompts."""
        self._generate(n, min(tokens, WARMUP_TOKENS))
        return tokens_per_s(lambda: self._generate(n, tokens), n * tokens, min_seconds)

    def distinct_batch(self, texts: list[str], tokens: int) -> float:
        """Generated tokens/s of one ``generate`` over ``texts`` (rendered prompts), timed once
        (a long prompt makes it costly), after an untimed warm-up of the same batch size over
        the plain prompt with fewer tokens."""
        self._generate(len(texts), min(tokens, WARMUP_TOKENS))
        start = time.perf_counter()
        self._generate_texts(texts, tokens)
        return len(texts) * tokens / (time.perf_counter() - start)

    def close(self) -> None:
        """Free the model (and the GPU memory it held) before the neuron runs."""
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _generate(self, batch: int, tokens: int) -> None:
        self._generate_texts([self.text] * batch, tokens)

    def _generate_texts(self, texts: list[str], tokens: int) -> None:
        batch = len(texts)
        inputs = self.tokenizer(
            texts, padding=True, add_special_tokens=False, return_tensors="pt"
        ).to(self.device)
        config = GenerationConfig(
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        generated = out.shape[1] - inputs["input_ids"].shape[1]
        if out.shape[0] != batch or generated != tokens:
            raise PeerError(
                f"generate returned {out.shape[0]}×{generated} new tokens, "
                f"expected {batch}×{tokens}"
            )


def tokens_per_s(unit: Callable[[], None], tokens: int, min_seconds: float) -> float:
    """Run ``unit``, which generates ``tokens``, until ``min_seconds`` have passed; tokens/s."""
    start = time.perf_counter()
    generated = 0
    while True:
        unit()
        generated += tokens
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return generated / elapsed


def build_shaped_model(
    tokenizer_dir: Path, out_dir: Path, device: torch.device, dtype: torch.dtype
) -> Path:
    """A random Qwen3 of ``SHAPE_0_44B`` in ``dtype`` at ``out_dir``, built on ``device``.

    The config (special token ids, context length) and tokenizer files come from
    ``tokenizer_dir``, the tiny model's folder.
    """
    tiny = AutoConfig.from_pretrained(tokenizer_dir)
    # A fresh config, not setattr: derived fields (one layer_types entry a layer) must follow.
    fields = {k: v for k, v in tiny.to_dict().items() if k != "layer_types"}
    config = type(tiny)(**(fields | SHAPE_0_44B))
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tokenizer_dir)
    model.save_pretrained(out_dir)
    written_above = {"config.json", "generation_config.json"}
    for path in tokenizer_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name not in written_above:
            shutil.copy2(path, out_dir / path.name)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out_dir
