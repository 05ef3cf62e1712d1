"""Paged KV bookkeeping: fixed-size blocks, a block table per sequence, prefix reuse.

The first piece of the paged cache (issue 14), in the way of nano-vllm's ``BlockManager``
and vLLM: the KV memory of a model is ``num_blocks`` blocks of ``block_size`` token slots,
and each sequence holds a ``BlockTable``, the blocks its tokens occupy in order. This
module only counts and hands out block ids; the runner owns the tensors they index.

Contracts:

* A block is either free or used, never both; a used block has a reference count ≥ 1 (the
  sequences whose tables hold it) and a free one 0.
* A full block is sealed with a hash of its tokens chained to the hash of the block before
  it, so equal hashes mean equal prefixes. The hash is ``blake2b`` of the token ids, the
  same in every process and run (Python's ``hash`` is salted per process).
* ``allocate`` reuses every leading full block whose prefix is cached (in use by another
  sequence, or free but not yet overwritten), counting those tokens in ``cached_tokens``:
  the runner prefills only the rest. At least the last prompt token is always computed,
  since its logits start the generation (when the whole prompt was cached, its KV is
  written again, the same values, into a block that may be shared).
* A block is sealed when it is planned full, before the step that writes its keys and
  values has run, so that sequences admitted together share it at once. Those seals are
  pending until ``commit()`` (the step's forward pass succeeded); ``forget_pending()`` (it
  failed) unseals them, so no prompt ever reuses a block whose content was not computed.
* With ``prefix_caching`` off nothing is hashed or shared: every prompt is computed whole.
* A freed block keeps its hash and content until it is handed out again: free blocks are
  reused least recently freed first, so the prefixes used last stay cached longest.
* Everything here runs on the engine's worker thread: no locks.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Block", "BlockManager", "BlockTable", "prefix_hash"]

NO_HASH = -1


def prefix_hash(token_ids: Sequence[int], previous: int = NO_HASH) -> int:
    """The hash of a full block of ``token_ids`` after the block hashed ``previous``."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(previous.to_bytes(8, "little", signed=True))
    digest.update(array("q", token_ids).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = NO_HASH  # NO_HASH while the block is not full
    token_ids: tuple[int, ...] = ()  # a sealed block's tokens, to confirm a hash hit


@dataclass(slots=True)
class BlockTable:
    """The blocks one sequence's tokens occupy, in order, and how many tokens it holds."""

    block_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, found in the cache at allocation


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("a block manager needs at least one block of at least one slot")
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.used: set[int] = set()
        self.by_hash: dict[int, int] = {}  # sealed hash → block id (free or used)
        self.num_cached_free = 0  # free blocks that still hold a sealed prefix
        self.pending: list[int] = []  # sealed since the last commit, content not yet computed

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return len(self.used)

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of a prompt ``allocate`` would find cached now."""
        cached = sum(len(tokens) for tokens, _, hit in self._plan(token_ids) if hit is not None)
        return min(cached, len(token_ids) - 1) if cached else 0

    def commit(self) -> None:
        """The step's forward pass wrote every pending block: their seals hold."""
        self.pending.clear()

    def forget_pending(self) -> None:
        """The step's forward pass failed: unseal what it was to write."""
        for block_id in self.pending:
            block = self.blocks[block_id]
            if block.hash != NO_HASH and self.by_hash.get(block.hash) == block_id:
                del self.by_hash[block.hash]
            if block.hash != NO_HASH and block_id in self.free:
                self.num_cached_free -= 1
            block.hash, block.token_ids = NO_HASH, ()
        self.pending.clear()

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- a sequence's whole life -----------------------------------------------------------

    def can_allocate(self, token_ids: Sequence[int]) -> bool:
        """Whether ``allocate`` would succeed now: the blocks it would take from the free
        list (fresh ones, and cached ones that are free) are there."""
        taken = sum(
            1 for _, _, cached in self._plan(token_ids) if cached is None or cached in self.free
        )
        return taken <= len(self.free)

    def allocate(self, token_ids: Sequence[int]) -> BlockTable:
        """A table for a prompt; its leading cached blocks are shared, not computed again."""
        if not self.can_allocate(token_ids):
            raise MemoryError(f"{self.blocks_for(len(token_ids))} blocks needed, fewer free")
        table = BlockTable(num_tokens=len(token_ids))
        for tokens, hashed, cached in self._plan(token_ids):
            if cached is not None:
                self._take(cached)
                table.block_ids.append(cached)
                table.cached_tokens += len(tokens)
                continue
            block = self._fresh()
            if hashed != NO_HASH:
                self._seal(block, tokens, hashed)
            table.block_ids.append(block.block_id)
        if table.cached_tokens == len(token_ids):  # the last token's logits are needed
            table.cached_tokens -= 1
        return table

    def can_append(self, table: BlockTable) -> bool:
        """Whether one more token fits (a new block is needed only at a boundary)."""
        return table.num_tokens % self.block_size != 0 or bool(self.free)

    def append(self, table: BlockTable, token_ids: Sequence[int]) -> None:
        """Count the sequence's newest token; ``token_ids`` is all of its tokens so far."""
        if table.num_tokens % self.block_size == 0:
            if not self.free:
                raise MemoryError("no free block for the next token")
            table.block_ids.append(self._fresh().block_id)
        table.num_tokens += 1
        if table.num_tokens % self.block_size == 0 and self.prefix_caching:  # full: seal it
            start = table.num_tokens - self.block_size
            block = self.blocks[table.block_ids[-1]]
            tokens = tuple(token_ids[start : table.num_tokens])
            self._seal(block, tokens, prefix_hash(tokens, self._previous(table)))

    def free_table(self, table: BlockTable) -> None:
        """Let go of a sequence's blocks; the last ones go to the free list's recent end."""
        for block_id in reversed(table.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.used.discard(block_id)
                self.free[block_id] = None
                if block.hash != NO_HASH:
                    self.num_cached_free += 1
        table.block_ids.clear()
        table.num_tokens = 0

    # --- inside --------------------------------------------------------------------------

    def _plan(self, token_ids: Sequence[int]) -> list[tuple[tuple[int, ...], int, int | None]]:
        """Each block's tokens, its chained hash (NO_HASH unless full), and the block that
        holds that prefix already, for the leading run of such blocks only."""
        plan: list[tuple[tuple[int, ...], int, int | None]] = []
        previous, hits = NO_HASH, True
        for start in range(0, len(token_ids), self.block_size):
            tokens = tuple(token_ids[start : start + self.block_size])
            if len(tokens) < self.block_size:
                plan.append((tokens, NO_HASH, None))
                break
            if not self.prefix_caching:
                plan.append((tokens, NO_HASH, None))
                continue
            previous = prefix_hash(tokens, previous)
            found = self.by_hash.get(previous) if hits else None
            hits = found is not None and self.blocks[found].token_ids == tokens
            plan.append((tokens, previous, found if hits else None))
        return plan

    def _previous(self, table: BlockTable) -> int:
        """The hash of the block before the table's last one (NO_HASH for the first)."""
        index = len(table.block_ids) - 2
        return self.blocks[table.block_ids[index]].hash if index >= 0 else NO_HASH

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
            self.used.add(block_id)
            if block.hash != NO_HASH:
                self.num_cached_free -= 1
        block.ref_count += 1

    def _fresh(self) -> Block:
        block_id, _ = self.free.popitem(last=False)  # the least recently freed
        block = self.blocks[block_id]
        if block.hash != NO_HASH:
            self.num_cached_free -= 1
            if self.by_hash.get(block.hash) == block_id:
                del self.by_hash[block.hash]  # its content is about to be overwritten
        block.hash, block.token_ids, block.ref_count = NO_HASH, (), 1
        self.used.add(block_id)
        return block

    def _seal(self, block: Block, tokens: tuple[int, ...], hashed: int) -> None:
        """Mark a full block as holding ``tokens`` after the prefix hashed into ``hashed``."""
        block.hash, block.token_ids = hashed, tokens
        self.by_hash[hashed] = block.block_id
        self.pending.append(block.block_id)
