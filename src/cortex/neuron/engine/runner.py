"""The transformers model on its device, running every live sequence in one batch.

One KV cache holds all running sequences as rows, left-padded to a common length,
with a 2-D attention mask marking the padding — the layout transformers' own batched
``generate`` uses, made dynamic: rows join (a new prompt is prefilled, then padded
and concatenated) and leave (rows are selected away, and columns that are padding
in every row are trimmed) between steps. Keys are cached with their rotary position
already applied, so moving a row inside the buffer changes nothing it attends to.

The runner holds tensors only — the cache and its mask — not the sequences. Which
sequence each row belongs to is the scheduler's ``running`` list, the one source of
truth: ``prefill`` appends rows in the order given, ``decode`` takes the running
sequences in row order, and ``keep`` is told which rows stay when some leave.

Only the worker thread calls a runner. Logits are computed for the last position
only, so a long prompt costs no ``[S, V]`` tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence as Seq
from typing import Any

import torch
from transformers import DynamicCache

from cortex.neuron.engine.sequence import Sequence


def can_batch(model: Any) -> bool:
    """Rows can be padded and moved only in caches of plain full-attention layers."""
    cache = DynamicCache(config=model.config)
    return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.24
    (which deprecates ``past_key_values``), ``past_key_values`` before and in models that
    still name it so."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = out.get("cache")  # read past_key_values only where it is still the name
    return cache if cache is not None else out.past_key_values


class ModelRunner:
    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        self._cache_keyword = cache_keyword(model)
        self.vocab_size = input_vocab_size(model)
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 = real token, 0 = padding

    @property
    def num_rows(self) -> int:
        return 0 if self._mask is None else self._mask.shape[0]

    def count_cached_tokens(self) -> int:
        """Real tokens held in the KV cache (padding not counted); waits for the device."""
        return 0 if self._mask is None else int(self._mask.sum())

    @property
    def cache_bytes(self) -> int:
        if self._cache is None:
            return 0
        return sum(
            layer.keys.numel() * layer.keys.element_size() * 2
            for layer in self._cache.layers
            if layer.keys is not None
        )

    @torch.inference_mode()
    def prefill(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """Run new prompts and add them as rows after those held; next-token logits ``[N, V]``."""
        longest = max(seq.num_prompt_tokens for seq in seqs)
        # input_ids, mask: [N, L], left-padded
        ids = torch.zeros(len(seqs), longest, dtype=torch.long)
        mask = torch.zeros(len(seqs), longest, dtype=torch.long)
        for row, seq in enumerate(seqs):
            prompt = seq.request.prompt_ids
            ids[row, longest - len(prompt) :] = torch.tensor(prompt)
            mask[row, longest - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: cache},
        )
        self._join(_returned_cache(out), mask)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    @torch.inference_mode()
    def decode(self, rows: Seq[Sequence]) -> torch.Tensor:
        """One token for every row; ``rows`` are the sequences in row order; logits ``[B, V]``."""
        if self._mask is None or len(rows) != self._mask.shape[0]:
            raise RuntimeError(f"decode of {len(rows)} sequences over {self.num_rows} rows")
        # input_ids: [B, 1] the token each row sampled last; positions: real tokens so far
        ids = torch.tensor([[seq.last_token_id] for seq in rows], device=self.device)
        positions = self._mask.sum(dim=-1, keepdim=True)
        self._mask = torch.cat([self._mask, torch.ones_like(positions)], dim=-1)
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: self._cache},
        )
        self._cache = _returned_cache(out)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def keep(self, rows: Seq[int]) -> None:
        """Keep the rows at these positions (ascending), drop the others and the padding
        they leave (rows of finished or cancelled sequences)."""
        if len(rows) == self.num_rows:
            return
        if not rows:
            self._cache = self._mask = None
            return
        if self._mask is None or self._cache is None:
            raise RuntimeError(f"keep {len(rows)} rows of none")
        index = torch.tensor(rows, device=self.device)
        self._mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row can go.
        start = int(self._mask.any(dim=0).nonzero()[0])
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]

    def _join(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the rows of a prefill's cache (``mask``: [N, L]) after the ones held.

        All or nothing: every tensor is built before any is stored, so a failure leaves
        the rows held as they were (and a failed prefill is then retried row by row)."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        old_pad, new_pad = width - self._mask.shape[1], width - mask.shape[1]
        joined_mask = torch.cat([_pad_left(self._mask, old_pad), _pad_left(mask, new_pad)])
        # keys, values: [B, H, T, D]; pad T on the left, then stack the rows
        joined = [
            tuple(
                torch.cat([_pad_left(o, old_pad, -2), _pad_left(n, new_pad, -2)])
                for o, n in ((old.keys, new.keys), (old.values, new.values))
            )
            for old, new in zip(self._cache.layers, cache.layers, strict=True)
        ]
        for layer, (keys, values) in zip(self._cache.layers, joined, strict=True):
            layer.keys, layer.values = keys, values
        self._mask = joined_mask


def input_vocab_size(model: Any) -> int | None:
    """How many token ids the model's input embedding has rows for (None: unknown)."""
    try:
        rows = model.get_input_embeddings().weight.shape[0]
    except (AttributeError, TypeError, NotImplementedError):
        return None
    return int(rows)


def _pad_left(tensor: torch.Tensor, size: int, dim: int = -1) -> torch.Tensor:
    if size == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = size
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
