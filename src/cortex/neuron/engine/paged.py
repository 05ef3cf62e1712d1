"""The paged KV cache and the attention that reads it, plugged into transformers.

transformers lets a model's attention be any function registered with
``AttentionInterface``; the models call it with the layer's queries, keys and values after
the rotary embedding, and pass on any keyword they were called with. ``paged_attention``
is registered as ``"cortex_paged"``: the runner calls the model on a packed batch (every
sequence's new tokens in one row, ``[1, T]``, with their true positions) and a ``StepPlan``
as the keyword ``cortex_plan``. Per layer, the function

1. writes the new keys and values into the cache at the plan's slots (a slot is
   ``block_id * block_size + offset``, so a sequence's tokens live in its own blocks);
2. attends each sequence's queries to its own tokens, read back through its slots:
   decoding sequences (one query each) in groups of similar length with one SDPA call
   per group, prefilling ones one by one (causal, offset by the prefix found cached).

All writes come before any read, so a sequence may read in the same step a block another
one writes (``n > 1`` siblings share their prompt's blocks from the first step). The
cache holds real tokens only: a sequence's memory is its own length.

``probe_layout`` runs one forward with the function in probe mode to learn each layer's
key/value shape; a model whose attention this cannot serve (attention sinks, soft-capped
logits, layers that are not plain full or sliding-window attention) gets ``None`` and the
runner falls back to transformers' own cache, one sequence at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "cortex_paged"
_PLAIN_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")
# A decode group may pad its sequences up to this much more than their real lengths.
_GROUP_SLACK = 1.25


@dataclass(frozen=True, slots=True)
class LayerShape:
    kv_heads: int
    key_dim: int
    value_dim: int


class PagedKV:
    """Per layer, keys and values of ``num_blocks * block_size`` token slots, and one more,
    ``zero_slot``, that stays zero: a decode group's padding points there. (Memory fresh
    from the allocator may hold NaN, and a masked-out NaN value still poisons SDPA's
    product: 0 × NaN is NaN.)"""

    def __init__(
        self,
        layers: list[LayerShape],
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        slots = num_blocks * block_size
        self.num_blocks, self.block_size, self.zero_slot = num_blocks, block_size, slots
        self.keys = [
            torch.empty(slots + 1, s.kv_heads, s.key_dim, dtype=dtype, device=device)
            for s in layers
        ]
        self.values = [
            torch.empty(slots + 1, s.kv_heads, s.value_dim, dtype=dtype, device=device)
            for s in layers
        ]
        for tensor in (*self.keys, *self.values):
            tensor[slots].zero_()

    @property
    def nbytes(self) -> int:
        """The blocks' memory (the zero slot, one token's worth, is not counted)."""
        slots = self.zero_slot
        return sum(t[:slots].numel() * t.element_size() for t in (*self.keys, *self.values))


def bytes_per_token(layers: list[LayerShape], dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(s.kv_heads * (s.key_dim + s.value_dim) * size for s in layers)


@dataclass(slots=True)
class Chunk:
    """One sequence's part of a step: ``length`` query tokens from packed row ``start``,
    the last of them at position ``context - 1``; ``slots``: where its ``context`` tokens
    live."""

    start: int
    length: int
    context: int
    slots: torch.Tensor  # [context] long
    _masks: dict[int | None, torch.Tensor | None] = field(default_factory=dict)

    def mask(self, window: int | None) -> torch.Tensor | None:
        """Bool ``[length, context]`` (True: attend), or None where plain causal serves."""
        if window in self._masks:
            return self._masks[window]
        mask: torch.Tensor | None = None
        if self.length != self.context or (window is not None and window < self.context):
            device = self.slots.device
            keys = torch.arange(self.context, device=device)
            queries = torch.arange(self.context - self.length, self.context, device=device)
            mask = keys[None, :] <= queries[:, None]
            if window is not None:
                mask &= keys[None, :] > queries[:, None] - window
        self._masks[window] = mask
        return mask


@dataclass(slots=True)
class DecodeGroup:
    """Decoding sequences attended together: their packed rows, their slots padded to the
    longest (``[G, L]``) and their lengths."""

    rows: torch.Tensor  # [G] long
    slots: torch.Tensor  # [G, L] long
    lengths: torch.Tensor  # [G] long
    whole: bool = False  # every decoding sequence, in packed order
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, window: int | None) -> torch.Tensor:
        """Bool ``[G, 1, 1, L]``: each sequence's own tokens (within the window)."""
        if window not in self._masks:
            keys = torch.arange(self.slots.shape[1], device=self.slots.device)[None, :]
            mask = keys < self.lengths[:, None]
            if window is not None:
                mask &= keys > self.lengths[:, None] - 1 - window
            self._masks[window] = mask[:, None, None, :]
        return self._masks[window]


@dataclass(slots=True)
class StepPlan:
    cache: PagedKV
    write_slots: torch.Tensor  # [T] long: where each packed token's key and value go
    chunks: list[Chunk]
    groups: list[DecodeGroup] = field(default_factory=list)  # set when every chunk decodes


def decode_groups(
    lengths: list[int], slots: torch.Tensor, lengths_tensor: torch.Tensor
) -> list[DecodeGroup]:
    """Group decoding sequences by length so that padding stays within ``_GROUP_SLACK``;
    ``slots``: ``[N, W]`` each sequence's slots (padded), ``lengths``: its tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= _GROUP_SLACK * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    if len(groups) == 1 and order == list(range(len(lengths))):
        rows = torch.arange(len(lengths), device=slots.device)
        return [DecodeGroup(rows, slots[:, : lengths[order[-1]]], lengths_tensor, whole=True)]
    out = []
    for members in groups:
        rows = torch.tensor(members, device=slots.device)
        longest = lengths[members[-1]]
        out.append(DecodeGroup(rows, slots[rows, :longest], lengths_tensor[rows]))
    return out


def paged_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` [1, H, T, D], ``key``/``value`` [1, KVH, T, D]; returns [1, T, H, Dv]."""
    plan: StepPlan | None = kwargs.pop("cortex_plan", None)
    probe: dict[Any, Any] | None = kwargs.pop("cortex_probe", None)
    if probe is not None:
        return _probe(probe, module, query, key, value, scaling, kwargs)
    if plan is None:  # a caller of the model's own (generate): transformers' SDPA
        plain: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return plain
    window: int | None = kwargs.get("sliding_window")
    layer = module.layer_idx
    keys, values = plan.cache.keys[layer], plan.cache.values[layer]
    keys.index_copy_(0, plan.write_slots, key[0].transpose(0, 1))
    values.index_copy_(0, plan.write_slots, value[0].transpose(0, 1))
    q = query[0]  # [H, T, D]
    if len(plan.groups) == 1 and plan.groups[0].whole:  # the usual decode: one SDPA call
        o = _attend_group(plan.groups[0], q, keys, values, scaling, window)
        return o.transpose(1, 2).transpose(0, 1), None  # [1, G, H, Dv]
    out = query.new_empty(q.shape[1], q.shape[0], value.shape[-1])  # [T, H, Dv]
    if plan.groups:
        for group in plan.groups:
            out[group.rows] = _attend_group(group, q, keys, values, scaling, window)[:, :, 0, :]
        return out.unsqueeze(0), None
    for chunk in plan.chunks:
        k = keys[chunk.slots].transpose(0, 1).unsqueeze(0)  # [1, KVH, L, D]
        v = values[chunk.slots].transpose(0, 1).unsqueeze(0)
        qc = q[:, chunk.start : chunk.start + chunk.length].unsqueeze(0)  # [1, H, q, D]
        mask = chunk.mask(window)
        o = F.scaled_dot_product_attention(
            qc, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=True
        )
        out[chunk.start : chunk.start + chunk.length] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _attend_group(
    group: DecodeGroup,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float | None,
    window: int | None,
) -> torch.Tensor:
    """One query token of each sequence in the group against its own tokens: [G, H, 1, Dv]."""
    k = keys[group.slots].transpose(1, 2)  # [G, KVH, L, D]
    v = values[group.slots].transpose(1, 2)
    qg = (q if group.whole else q[:, group.rows, :]).transpose(0, 1).unsqueeze(2)  # [G, H, 1, D]
    return F.scaled_dot_product_attention(
        qg, k, v, attn_mask=group.mask(window), scale=scaling, enable_gqa=True
    )


def _probe(
    probe: dict[Any, Any],
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """Record the layer's shape (and what we cannot serve), and attend plainly."""
    layer = getattr(module, "layer_idx", None)
    unsupported = [k for k in ("s_aux", "sinks", "softcap") if kwargs.get(k) is not None]
    if not isinstance(layer, int) or unsupported:
        probe["unsupported"] = unsupported or ["a layer without layer_idx"]
    else:
        probe[layer] = LayerShape(key.shape[1], key.shape[-1], value.shape[-1])
    o = F.scaled_dot_product_attention(
        query, key, value, is_causal=True, scale=scaling, enable_gqa=True
    )
    return o.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, paged_attention)
# Callers without a plan get SDPA's masks; the runner passes ``NO_MASK``, a 4-D mask that
# transformers hands on as it is, so that no [T, T] mask is built for a packed step.
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


@torch.inference_mode()
def probe_layout(model: Any, device: torch.device) -> list[LayerShape] | None:
    """Each layer's key/value shape when the paged attention can serve the model, else
    None (the model keeps its own attention)."""
    layers = DynamicCache(config=model.config).layers
    if not all(type(layer).__name__ in _PLAIN_LAYERS for layer in layers):
        return None
    original = model.config._attn_implementation
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, TypeError, AttributeError):
        return None
    if model.config._attn_implementation != ATTENTION:
        return None
    found: dict[Any, Any] = {}
    try:
        ids = torch.zeros(1, 2, dtype=torch.long, device=device)
        model(
            input_ids=ids,
            attention_mask=NO_MASK.to(device),
            use_cache=False,
            logits_to_keep=1,
            cortex_probe=found,
        )
    except Exception:
        found["unsupported"] = ["the probe failed"]
    shapes = [found.get(i) for i in range(len(layers))]
    if "unsupported" in found or any(s is None for s in shapes) or len(found) != len(layers):
        model.set_attn_implementation(original)
        return None
    return [s for s in shapes if s is not None]
