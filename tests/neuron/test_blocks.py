"""The paged KV bookkeeping: its invariants hold under any sequence of allocations,
appends and frees, prefixes are found again, and hashes do not depend on the process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.neuron.engine.blocks import BlockManager, BlockTable, prefix_hash


def check(manager: BlockManager, tables: list[BlockTable]) -> None:
    everything = set(range(len(manager.blocks)))
    assert not (set(manager.free) & manager.used), "a block both free and used"
    assert set(manager.free) | manager.used == everything
    held: dict[int, int] = {}
    for table in tables:
        assert len(table.block_ids) == manager.blocks_for(table.num_tokens)
        for block_id in table.block_ids:
            held[block_id] = held.get(block_id, 0) + 1
    for block in manager.blocks:
        assert block.ref_count == held.get(block.block_id, 0)
        assert (block.ref_count > 0) == (block.block_id in manager.used)
    for hashed, block_id in manager.by_hash.items():
        assert manager.blocks[block_id].hash == hashed
    cached = sum(1 for b in manager.free if manager.blocks[b].hash != -1)
    assert manager.num_cached_free == cached


prompts = st.lists(st.integers(0, 3), min_size=1, max_size=40)  # few ids: prefixes repeat


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("allocate"), prompts),
            st.tuples(st.just("append"), st.integers(0, 7)),
            st.tuples(st.just("free"), st.integers(0, 7)),
        ),
        max_size=40,
    )
)
def test_no_block_is_lost_shared_wrongly_or_left_counted(steps: list[tuple[str, object]]) -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    live: list[tuple[BlockTable, list[int]]] = []
    for action, arg in steps:
        if action == "allocate":
            assert isinstance(arg, list)
            if manager.can_allocate(arg):
                live.append((manager.allocate(arg), list(arg)))
            else:
                with pytest.raises(MemoryError):
                    manager.allocate(arg)
        elif live and action == "append":
            assert isinstance(arg, int)
            table, tokens = live[arg % len(live)]
            if manager.can_append(table):
                tokens.append(arg % 4)
                manager.append(table, tokens)
        elif live and action == "free":
            assert isinstance(arg, int)
            table, _ = live.pop(arg % len(live))
            manager.free_table(table)
        check(manager, [table for table, _ in live])
    for table, _ in live:
        manager.free_table(table)
    check(manager, [])
    assert all(block.ref_count == 0 for block in manager.blocks)
    assert manager.num_free == 16


def test_a_shared_prefix_is_computed_once_and_outlives_its_first_sequence() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    system = list(range(100, 108))  # two full blocks
    first = manager.allocate([*system, 1, 2])
    assert first.cached_tokens == 0
    second = manager.allocate([*system, 3])
    assert second.cached_tokens == 8
    assert second.block_ids[:2] == first.block_ids[:2]
    manager.free_table(first)
    manager.free_table(second)
    again = manager.allocate([*system, 5, 6, 7])  # free, but not overwritten: still cached
    assert again.cached_tokens == 8
    whole = manager.allocate(system)  # all cached: the last token is computed again
    assert whole.cached_tokens == 7


def test_generated_tokens_seal_blocks_that_a_later_turn_reuses() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = [1, 2, 3]
    table = manager.allocate(tokens)
    for token in (4, 5, 6, 7, 8):
        tokens.append(token)
        manager.append(table, tokens)
    manager.free_table(table)
    follow_up = manager.allocate([*tokens, 9])  # the next turn repeats the conversation
    assert follow_up.cached_tokens == 8


def test_cached_blocks_are_reused_least_recently_freed_first() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)
    old = manager.allocate([1, 1, 1, 1])
    new = manager.allocate([2, 2, 2, 2])
    manager.free_table(old)
    manager.free_table(new)
    short = manager.allocate([3, 3])  # one block: the oldest freed, one of ``old``'s
    longer = manager.allocate([2, 2, 2, 2, 5])  # ``new``'s two blocks, and the last one
    assert longer.cached_tokens == 4
    assert not manager.can_allocate([4])
    manager.free_table(short)
    manager.free_table(longer)
    assert manager.allocate([1, 1, 1, 1]).cached_tokens == 0  # overwritten, both of them


def test_hashes_are_the_same_in_another_process() -> None:
    here = prefix_hash([5, 6, 7], prefix_hash([1, 2, 3]))
    code = (
        "from cortex.neuron.engine.blocks import prefix_hash;"
        "print(prefix_hash([5, 6, 7], prefix_hash([1, 2, 3])))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert int(there) == here
    assert prefix_hash([1, 2, 3]) != prefix_hash([1, 2, 4])
    assert prefix_hash([5, 6, 7], prefix_hash([1, 2, 3])) != prefix_hash([5, 6, 7])


def test_without_prefix_caching_every_prompt_is_computed_whole() -> None:
    manager = BlockManager(num_blocks=8, block_size=4, prefix_caching=False)
    prompt = list(range(10))
    first = manager.allocate(prompt)
    second = manager.allocate(prompt)
    assert len(first.block_ids) == len(second.block_ids) == 3
    assert (first.cached_tokens, second.cached_tokens) == (0, 0)
    assert not set(first.block_ids) & set(second.block_ids)
    check(manager, [first, second])
    manager.free_table(first)
    assert manager.allocate(prompt).cached_tokens == 0


def test_a_failed_step_unseals_what_it_was_to_write() -> None:
    """Blocks sealed at allocation are not reused once the pass that should have filled
    them failed; committed ones are."""
    manager = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(9))
    table = manager.allocate(prompt)
    manager.forget_pending()  # the prefill failed
    manager.free_table(table)
    again = manager.allocate(prompt)
    assert again.cached_tokens == 0
    manager.commit()  # this time it ran
    manager.free_table(again)
    assert manager.num_cached_free == 2
    assert manager.allocate(prompt).cached_tokens == 8
    assert manager.cached_prefix(prompt) == 8
