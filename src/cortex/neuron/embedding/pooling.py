"""The embedding hot path as small tensor functions: pad → forward → pool → finish.

Inputs are padded on the right whatever the tokenizer's ``padding_side``, with an attention
mask, so every sequence's real tokens sit at positions ``0 … length-1``: the first token is
the CLS token, the last real one is at ``length - 1``, positions and causal attention are
those of the input alone, and pooling reads the real tokens only. Padding changes no vector.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cortex.neuron.embedding.spec import PoolingMode


def pad(
    ids: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, S], attention_mask [B, S]) for inputs of up to S tokens, right-padded."""
    longest = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return input_ids.to(device), mask.to(device)


def forward(model: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last hidden states [B, S, H] (a decoder keeps no KV cache)."""
    extra = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    output = model(input_ids=input_ids, attention_mask=mask, **extra)
    hidden: torch.Tensor = output.last_hidden_state
    return hidden


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[PoolingMode, ...]) -> torch.Tensor:
    """One vector per sequence [B, len(modes) * H] in float32, the modes concatenated.

    ``hidden``: [B, S, H] right-padded; ``mask``: [B, S] (1 for a real token)."""
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).float()  # [B, S, 1]
    counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    lengths = mask.sum(dim=1)  # [B]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    out: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[:, 0])
        elif mode == "max":
            out.append(hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values)
        elif mode == "mean":
            out.append((hidden * weights).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            out.append((hidden * weights).sum(dim=1) / counts.sqrt())
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
            by_position = weights * positions.view(1, -1, 1).float()  # [B, S, 1]
            out.append((hidden * by_position).sum(dim=1) / by_position.sum(dim=1).clamp(min=1e-9))
        else:  # lasttoken
            out.append(hidden[rows, lengths - 1])
    return torch.cat(out, dim=-1)


def finish(vectors: torch.Tensor, dimensions: int | None, normalize: bool) -> torch.Tensor:
    """Truncated to ``dimensions`` (Matryoshka), then L2-normalised where the model is.

    Normalising the truncated vector equals normalising, truncating and normalising again."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    return F.normalize(vectors, p=2, dim=-1) if normalize else vectors
