"""The transformers model on its device: a forward pass over the sequences of one step.

``PagedRunner`` serves every model whose attention ``paged.probe_layout`` can take over:
the KV cache is a pool of fixed-size blocks (``paged.PagedKV``) and each sequence's
``BlockTable`` (kept by the scheduler's ``BlockManager``) says which blocks hold its
tokens, so a batch costs what its sequences' real lengths cost — no padding — and a
prompt whose leading blocks are cached computes only the rest. A step packs the tokens to
compute of all its sequences into one row and calls the model once
(``prefill``: each sequence's uncached tokens; ``decode``: one token each).

``DenseRunner`` is the fallback for models the paged attention cannot serve (attention
sinks, soft-capped logits, linear-attention layers): transformers' own ``DynamicCache``,
one sequence at a time, its whole prompt computed (its blocks are still counted, so the
KV budget holds).

Only the worker thread calls a runner. Logits are computed for each sequence's last
position only, so a long prompt costs no ``[S, V]`` tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence as Seq
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from cortex.errors import InsufficientMemory
from cortex.neuron.engine.blocks import BlockManager
from cortex.neuron.engine.paged import (
    NO_MASK,
    Chunk,
    LayerShape,
    PagedKV,
    StepPlan,
    bytes_per_token,
    decode_groups,
    probe_layout,
)
from cortex.neuron.engine.sequence import Sequence

# The KV cache of an engine made without a budget (tests, tools): never more than its
# sequences can use.
DEFAULT_KV_CACHE_BYTES = 256 * 1024**2


class Runner(Protocol):
    model: Any
    device: torch.device
    vocab_size: int | None
    paged: bool
    kv_cache_bytes: int  # the cache's memory (0 where transformers' own cache grows)

    def prefill(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """Compute the uncached tokens of new (or preempted) sequences; logits ``[N, V]``."""
        ...

    def decode(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """One token for each running sequence; logits ``[N, V]``."""
        ...

    def release(self) -> None:
        """Nothing runs any more: drop what is held for the last sequences."""
        ...

    def close(self) -> None:
        """Let go of the model and the cache (the engine is being unloaded)."""
        ...


def make_runner(
    model: Any,
    device: torch.device,
    *,
    max_model_len: int,
    max_num_seqs: int,
    kv_cache_bytes: int | None,
    block_size: int,
    prefix_caching: bool,
) -> tuple[Runner, BlockManager, int]:
    """The runner for a model, its block manager, and the context it can hold: the
    model's own, or less when the KV cache holds fewer tokens (one sequence must fit).
    The cache takes ``kv_cache_bytes``, but never more than ``max_num_seqs`` full contexts
    need."""
    per_sequence = -(-max_model_len // block_size)
    layers = probe_layout(model, device)
    if layers is None:
        blocks = BlockManager(per_sequence, block_size, prefix_caching=False)
        return DenseRunner(model, device), blocks, max_model_len
    dtype = model.dtype
    block_bytes = bytes_per_token(layers, dtype) * block_size
    budget = DEFAULT_KV_CACHE_BYTES if kv_cache_bytes is None else kv_cache_bytes
    num_blocks = min(budget // block_bytes, max_num_seqs * per_sequence)
    if num_blocks < 1:
        raise InsufficientMemory(
            f"A KV cache of {budget} bytes holds no block of {block_size} tokens "
            f"({block_bytes} bytes); give the model more memory (kv_cache_bytes)",
            extra={"needed_bytes": block_bytes, "free_bytes": budget},
        )
    runner = PagedRunner(model, device, layers, num_blocks, block_size, dtype)
    blocks = BlockManager(num_blocks, block_size, prefix_caching=prefix_caching)
    return runner, blocks, min(max_model_len, num_blocks * block_size)


def input_vocab_size(model: Any) -> int | None:
    """How many token ids the model's input embedding has rows for (None: unknown)."""
    try:
        rows = model.get_input_embeddings().weight.shape[0]
    except (AttributeError, TypeError, NotImplementedError):
        return None
    return int(rows)


def _slots(seq: Sequence, block_size: int, device: torch.device) -> torch.Tensor:
    """The cache slot of each of the sequence's tokens held (``[num_tokens]``)."""
    table = seq.table
    if table is None:
        raise RuntimeError(f"request {seq.request.request_id} runs without KV blocks")
    blocks = torch.tensor(table.block_ids, dtype=torch.long, device=device)
    offsets = torch.arange(block_size, dtype=torch.long, device=device)
    return (blocks[:, None] * block_size + offsets[None, :]).flatten()[: table.num_tokens]


class PagedRunner:
    paged = True

    def __init__(
        self,
        model: Any,
        device: torch.device,
        layers: list[LayerShape],
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.device = device
        self.vocab_size = input_vocab_size(model)
        self.block_size = block_size
        self.cache = PagedKV(layers, num_blocks, block_size, dtype, device)
        self._offsets = torch.arange(block_size, dtype=torch.long, device=device)
        self.kv_cache_bytes = self.cache.nbytes
        self._no_mask = NO_MASK.to(device)

    @torch.inference_mode()
    def prefill(self, seqs: Seq[Sequence]) -> torch.Tensor:
        chunks: list[Chunk] = []
        ids: list[int] = []
        positions: list[int] = []
        start = 0
        for seq in seqs:
            table = seq.table
            assert table is not None
            tokens = seq.token_ids[table.cached_tokens : table.num_tokens]
            slots = _slots(seq, self.block_size, self.device)
            chunks.append(Chunk(start, len(tokens), table.num_tokens, slots))
            ids.extend(tokens)
            positions.extend(range(table.cached_tokens, table.num_tokens))
            start += len(tokens)
        write = torch.cat([c.slots[c.context - c.length :] for c in chunks])
        return self._forward(ids, positions, StepPlan(self.cache, write, chunks))

    @torch.inference_mode()
    def decode(self, seqs: Seq[Sequence]) -> torch.Tensor:
        tables = [seq.table for seq in seqs]
        if any(table is None for table in tables):
            raise RuntimeError("a decoding sequence holds no KV blocks")
        lengths = [table.num_tokens for table in tables if table is not None]
        width = max(len(table.block_ids) for table in tables if table is not None)
        padded = [t.block_ids + [0] * (width - len(t.block_ids)) for t in tables if t is not None]
        blocks = torch.tensor(padded, dtype=torch.long, device=self.device)  # [N, W]
        slots = (blocks[:, :, None] * self.block_size + self._offsets).flatten(1)
        count = torch.tensor(lengths, device=self.device)
        write = slots[torch.arange(len(seqs), device=self.device), count - 1]
        # Past its length, a row reads the zero slot: never a stale or unwritten one.
        columns = torch.arange(slots.shape[1], device=self.device)
        slots = slots.masked_fill(columns[None, :] >= count[:, None], self.cache.zero_slot)
        groups = decode_groups(lengths, slots, count)
        plan = StepPlan(self.cache, write, [], groups)
        ids = [seq.last_token_id for seq in seqs]
        return self._forward(ids, [n - 1 for n in lengths], plan, keep=0)

    def _forward(
        self, ids: list[int], positions: list[int], plan: StepPlan, keep: int | None = None
    ) -> torch.Tensor:
        """``keep``: 0 for the logits of every token (decode), else each chunk's last."""
        last = (
            keep
            if keep is not None
            else torch.tensor([c.start + c.length - 1 for c in plan.chunks], device=self.device)
        )
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            attention_mask=self._no_mask,
            use_cache=False,
            logits_to_keep=last,
            cortex_plan=plan,
        )
        logits: torch.Tensor = out.logits[0]
        return logits

    def release(self) -> None:
        """The blocks stay: a finished sequence's prefix is there for the next prompt."""

    def close(self) -> None:
        self.model = None
        self.cache.keys.clear()
        self.cache.values.clear()


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.24
    (which deprecates ``past_key_values``), ``past_key_values`` before and in models that
    still name it so."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class DenseRunner:
    """One sequence at a time in transformers' own cache (the scheduler runs one)."""

    paged = False
    kv_cache_bytes = 0

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.vocab_size = input_vocab_size(model)
        self._keyword = cache_keyword(model)
        self._cache: Any = None
        self._seq: Sequence | None = None

    @torch.inference_mode()
    def prefill(self, seqs: Seq[Sequence]) -> torch.Tensor:
        if len(seqs) != 1:
            raise RuntimeError(f"a dense runner prefills one sequence, not {len(seqs)}")
        ids = torch.tensor([seqs[0].token_ids], device=self.device)
        self._cache, self._seq = DynamicCache(config=self.model.config), seqs[0]
        return self._forward(ids, None)

    @torch.inference_mode()
    def decode(self, seqs: Seq[Sequence]) -> torch.Tensor:
        if len(seqs) != 1 or seqs[0] is not self._seq:
            raise RuntimeError("a dense runner decodes the one sequence it prefilled")
        seq = seqs[0]
        ids = torch.tensor([[seq.last_token_id]], device=self.device)
        return self._forward(ids, torch.tensor([[seq.num_tokens - 1]], device=self.device))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._keyword: self._cache},
        )
        cache = out.get("cache")
        self._cache = cache if cache is not None else out.past_key_values
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def release(self) -> None:
        self._cache = self._seq = None

    def close(self) -> None:
        self.release()
        self.model = None
