"""The transformers model on its device: prefill and decode with a KV cache.

Only the worker thread calls a runner. Each sequence keeps its own cache
(``Sequence.cache``); the runner computes the logits of the last position only, so
a long prompt costs no ``[S, V]`` logits tensor.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import torch
from transformers import DynamicCache

from cortex.neuron.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> torch.Tensor:
        """Run the prompt through the model; returns the next-token logits ``[1, V]``."""
        # input_ids: [1, S]
        input_ids = torch.tensor([seq.request.prompt_ids], device=self.device)
        seq.cache = DynamicCache(config=self.model.config)
        return self._forward(input_ids, seq)

    @torch.inference_mode()
    def decode(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """One step for each sequence; returns logits ``[B, V]`` in ``seqs`` order."""
        rows = []
        for seq in seqs:
            # input_ids: [1, 1], the token sampled last step
            input_ids = torch.tensor([[seq.last_token_id]], device=self.device)
            rows.append(self._forward(input_ids, seq))
        return torch.cat(rows, dim=0)

    def release(self, seq: Sequence) -> None:
        seq.cache = None

    def _forward(self, input_ids: torch.Tensor, seq: Sequence) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, past_key_values=seq.cache, use_cache=True, logits_to_keep=1
        )
        seq.cache = out.past_key_values
        # logits: [1, 1, V] → [1, V]
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits
