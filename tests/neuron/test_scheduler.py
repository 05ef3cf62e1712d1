"""Admission into the batch and the KV blocks it holds: the invariants hold for random
arrivals, cancels and finishes, with memory to spare and under pressure (preemption)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.engine.blocks import BlockManager
from cortex.neuron.engine.scheduler import Batch, Scheduler
from cortex.neuron.engine.sequence import Sequence, SequenceStatus
from cortex.neuron.wire.events import InferenceEvent
from cortex.neuron.wire.output import TextOutput


class _Letters:
    """The part of a tokenizer ``TextOutput`` needs."""

    def decode(self, token_ids: Seq[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(ord("a") + t % 26) for t in token_ids)


class _Sink:
    def put(self, events: list[InferenceEvent], completion_tokens: int) -> None:
        pass


def _seq(index: int, prompt_tokens: int) -> Sequence:
    """A prompt of its own tokens: nothing of it is found cached."""
    request = InferenceRequest(
        request_id=str(index),
        prompt_ids=[index * 1000 + i for i in range(prompt_tokens)],
        params=SamplingParams(max_tokens=16),
        output=TextOutput(_Letters()),
    )
    return Sequence(request=request, sink=_Sink(), arrival_time=float(index))


@dataclass
class Round:
    """What happens around one step: arrivals, then cancels, schedule, then finishes."""

    arrivals: list[int]  # prompt lengths
    cancels: list[int]  # picks among the sequences held (modulo their number)
    finishes: list[int]  # picks among the running ones, finished during the step


@dataclass
class Step:
    """One schedule: the queues before and after, and which were cancelled at the time."""

    waiting: list[Sequence]
    running: list[Sequence]
    cancelled: list[Sequence]  # of those held, waiting first, then running
    batch: Batch
    waiting_after: list[Sequence]
    running_after: list[Sequence]


rounds = st.lists(
    st.builds(
        Round,
        arrivals=st.lists(st.integers(1, 40), max_size=6),
        cancels=st.lists(st.integers(0, 1000), max_size=3),
        finishes=st.lists(st.integers(0, 1000), max_size=3),
    ),
    min_size=1,
    max_size=12,
)
limits = st.tuples(st.integers(1, 6), st.integers(1, 64))
BLOCK = 4


def _scheduler(max_num_seqs: int, max_prefill_tokens: int, blocks: int = 10_000) -> Scheduler:
    return Scheduler(max_num_seqs, max_prefill_tokens, BlockManager(blocks, BLOCK))


def _drive(limit: tuple[int, int], plan: list[Round]) -> list[Step]:
    scheduler = _scheduler(*limit)
    steps: list[Step] = []
    arrived = 0
    for round_ in plan:
        for length in round_.arrivals:
            scheduler.add(_seq(arrived, length))
            arrived += 1
        held = [*scheduler.waiting, *scheduler.running]
        for pick in round_.cancels:
            if held:
                held[pick % len(held)].cancel()
        waiting, running = list(scheduler.waiting), list(scheduler.running)
        cancelled = [seq for seq in [*waiting, *running] if seq.is_cancelled]
        batch = scheduler.schedule()
        waiting_after, running_after = list(scheduler.waiting), list(scheduler.running)
        steps.append(Step(waiting, running, cancelled, batch, waiting_after, running_after))
        before_retire = list(scheduler.running)
        for pick in round_.finishes:
            if before_retire:
                before_retire[pick % len(before_retire)].status = SequenceStatus.FINISHED
        scheduler.retire()
        assert scheduler.running == [s for s in before_retire if not s.is_finished]
    return steps


def _prompt_tokens(seqs: list[Sequence]) -> int:
    return sum(seq.num_prompt_tokens for seq in seqs)


@settings(max_examples=300, deadline=None)
@given(limits, rounds)
def test_never_more_than_max_num_seqs_run(limit: tuple[int, int], plan: list[Round]) -> None:
    for step in _drive(limit, plan):
        assert len(step.running_after) <= limit[0]


@settings(max_examples=300, deadline=None)
@given(limits, rounds)
def test_a_step_prefills_within_its_budget_unless_one_prompt_alone(
    limit: tuple[int, int], plan: list[Round]
) -> None:
    for step in _drive(limit, plan):
        admitted = step.batch.prefill
        assert _prompt_tokens(admitted) <= limit[1] or len(admitted) == 1


@settings(max_examples=300, deadline=None)
@given(limits, rounds)
def test_admits_first_in_first_out_and_as_many_as_fit(
    limit: tuple[int, int], plan: list[Round]
) -> None:
    max_num_seqs, budget = limit
    admitted: list[Sequence] = []
    for step in _drive(limit, plan):
        live = [seq for seq in step.waiting if seq not in step.cancelled]
        joined = step.batch.prefill
        # The head of the queue joins, in order; the rest waits, still in order.
        assert joined == live[: len(joined)]
        assert step.waiting_after == live[len(joined) :]
        if step.waiting_after:  # it stopped for want of a slot or of budget, not otherwise
            full = len(step.running_after) == max_num_seqs
            next_prompt = step.waiting_after[0].num_prompt_tokens
            assert full or (joined and _prompt_tokens(joined) + next_prompt > budget)
        admitted.extend(joined)
    arrivals = [seq.arrival_time for seq in admitted]
    assert arrivals == sorted(arrivals)


@settings(max_examples=300, deadline=None)
@given(limits, rounds)
def test_cancelled_sequences_are_dropped_and_reported(
    limit: tuple[int, int], plan: list[Round]
) -> None:
    for step in _drive(limit, plan):
        assert step.batch.cancelled == step.cancelled
        assert not set(step.cancelled) & {*step.waiting_after, *step.running_after}
        # The rows that stay keep their order; joining ones follow them.
        survivors = [seq for seq in step.running if seq not in step.cancelled]
        assert step.batch.decode == survivors
        assert step.running_after == [*survivors, *step.batch.prefill]
        assert all(seq.table is None for seq in step.cancelled)


def test_a_prompt_longer_than_the_budget_runs_alone_and_is_not_starved() -> None:
    scheduler = _scheduler(max_num_seqs=4, max_prefill_tokens=10)
    long, short, shorter = _seq(0, 50), _seq(1, 6), _seq(2, 4)
    for seq in (long, short, shorter):
        scheduler.add(seq)
    assert scheduler.schedule().prefill == [long]
    assert (long.status, short.status) == (SequenceStatus.RUNNING, SequenceStatus.WAITING)
    assert scheduler.schedule().prefill == [short, shorter]
    assert scheduler.running == [long, short, shorter]


def test_drain_hands_back_every_sequence_held() -> None:
    scheduler = _scheduler(max_num_seqs=1, max_prefill_tokens=100)
    seqs = [_seq(i, 3) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    scheduler.schedule()
    assert scheduler.drain() == [seqs[1], seqs[2], seqs[0]]  # waiting, then running
    assert not scheduler.has_work


def test_a_joining_sequence_whose_prefill_failed_leaves_running_and_frees_its_blocks() -> None:
    scheduler = _scheduler(max_num_seqs=5, max_prefill_tokens=100)
    first, second = _seq(0, 3), _seq(1, 3)
    for seq in (first, second):
        scheduler.add(seq)
    scheduler.schedule()
    joining = [_seq(2, 3), _seq(3, 3), _seq(4, 3)]
    for seq in joining:
        scheduler.add(seq)
    batch = scheduler.schedule()
    assert batch.prefill == joining
    # The middle one failed its prefill; the first running one finished.
    joining[1].status = first.status = SequenceStatus.FINISHED
    scheduler.unadmit([joining[1]])
    assert joining[1].table is None
    assert scheduler.running == [first, second, joining[0], joining[2]]
    scheduler.retire()
    assert scheduler.running == [second, joining[0], joining[2]]
    assert first.table is None
    assert scheduler.blocks.num_used == 3  # one block each for the three left


# --- under memory pressure ----------------------------------------------------------------


pressure = st.tuples(st.integers(1, 6), st.integers(1, 64), st.integers(4, 24))


def _check_blocks(scheduler: Scheduler) -> None:
    """Every block a running table holds is used, counted once per table; no other is."""
    blocks = scheduler.blocks
    holders: dict[int, int] = {}
    for seq in scheduler.running:
        assert seq.table is not None
        for block_id in seq.table.block_ids:
            holders[block_id] = holders.get(block_id, 0) + 1
    assert set(holders) == blocks.used
    assert all(blocks.blocks[b].ref_count == n for b, n in holders.items())
    assert not set(blocks.free) & blocks.used
    assert all(seq.table is None for seq in scheduler.waiting)


@settings(max_examples=300, deadline=None)
@given(pressure, rounds)
def test_under_pressure_decode_preempts_the_newest_and_blocks_stay_honest(
    limit: tuple[int, int, int], plan: list[Round]
) -> None:
    """Few blocks: every step each running sequence holds a slot for its next token (its
    table counts every token it has), the newest are preempted to the front of ``waiting``
    first, and no block is both free and used."""
    max_num_seqs, budget, num_blocks = limit
    scheduler = _scheduler(max_num_seqs, budget, num_blocks)
    arrived = 0
    for round_ in plan:
        for length in round_.arrivals:
            # A prompt that fits the cache alone (the harness caps the context so).
            scheduler.add(_seq(arrived, min(length, num_blocks * BLOCK - 8)))
            arrived += 1
        running_before = list(scheduler.running)
        batch = scheduler.schedule()
        _check_blocks(scheduler)
        assert len(scheduler.running) <= max_num_seqs
        for seq in batch.decode:
            assert seq.table is not None
            assert seq.table.num_tokens == seq.num_tokens
        # The preempted are the newest of those that ran, and wait first, newest last.
        if batch.preempted:
            kept = [s for s in running_before if s in batch.decode]
            assert running_before == [*kept, *reversed(batch.preempted)] or set(
                batch.preempted
            ) <= set(running_before)
            assert (
                list(scheduler.waiting)[: len(batch.preempted)] == list(reversed(batch.preempted))
                or batch.prefill
            )
        for seq in scheduler.running:  # each decodes a token; some finish
            seq.output_ids.append(7)
        for pick in round_.finishes:
            if scheduler.running:
                scheduler.running[pick % len(scheduler.running)].status = SequenceStatus.FINISHED
        scheduler.retire()
        _check_blocks(scheduler)
    for seq in scheduler.drain():
        assert seq.table is None
    assert scheduler.blocks.num_used == 0
    assert all(block.ref_count == 0 for block in scheduler.blocks.blocks)


def test_a_preempted_sequence_is_recomputed_with_what_it_generated() -> None:
    scheduler = _scheduler(max_num_seqs=4, max_prefill_tokens=100, blocks=4)
    old, new = _seq(0, 8), _seq(1, 8)
    scheduler.add(old)
    scheduler.add(new)
    assert scheduler.schedule().prefill == [old, new]  # 2 blocks each: all four taken
    for seq in (old, new):
        seq.output_ids.append(5)  # its 9th token needs a third block
    batch = scheduler.schedule()
    assert batch.decode == [old]
    assert batch.preempted == [new]
    assert list(scheduler.waiting) == [new]
    assert new.table is None
    assert new.preemptions == 1
    old.status = SequenceStatus.FINISHED
    scheduler.retire()
    batch = scheduler.schedule()
    assert batch.prefill == [new]
    assert new.table is not None
    assert new.table.num_tokens == 9
    assert scheduler.figures.preemptions == 1


def test_a_second_prompt_with_the_same_prefix_computes_only_the_rest() -> None:
    scheduler = _scheduler(max_num_seqs=4, max_prefill_tokens=1000)
    first = _seq(0, 20)
    scheduler.add(first)
    scheduler.schedule()
    scheduler.blocks.commit()
    first.status = SequenceStatus.FINISHED
    scheduler.retire()  # its five full blocks stay cached
    follow_up = Sequence(
        request=InferenceRequest(
            request_id="next",
            prompt_ids=[*first.request.prompt_ids, 1, 2, 3],
            params=SamplingParams(max_tokens=16),
            output=TextOutput(_Letters()),
        ),
        sink=_Sink(),
    )
    scheduler.add(follow_up)
    scheduler.schedule()
    assert follow_up.table is not None
    assert follow_up.table.cached_tokens == 20
    assert (scheduler.figures.hit_tokens, scheduler.figures.prefill_tokens) == (20, 20 + 3)
