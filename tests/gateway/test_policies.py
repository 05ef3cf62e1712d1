"""Routing and eviction are pure functions; their invariants hold for random fleets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.config import ModelProfile, ModelsConfig, PlacementSection
from cortex.errors import NoCapacity
from cortex.gateway import clock
from cortex.gateway.evictor import eviction_order, is_evictable
from cortex.gateway.inflight import InFlight
from cortex.gateway.router import (
    Placement,
    Unplaceable,
    free_bytes,
    pick_ready,
    plan,
    replicas_wanted,
)
from cortex.gateway.state import (
    HALF_LIFE,
    ModelState,
    NodeState,
    PendingLoad,
    Snapshot,
    frequency,
    learn_speed,
    reload_seconds,
    settle,
)
from cortex.protocol.lifecycle import DeviceInfo, ModelRecord, NodeStatus

GB = 10**9
MODELS = [f"m{i}" for i in range(6)]
NODES = ["a", "b", "c"]


@st.composite
def fleets(draw: Any) -> tuple[Snapshot, dict[tuple[str, str], int]]:
    """A random fleet under any eviction strategy and placement, with busy models and (for
    gdsf) request counts; the invariants must hold under each."""
    sizes = {m: draw(st.integers(1, 5)) * 100 for m in MODELS}
    profiles = [
        ModelProfile(
            id=m,
            neurons=draw(st.permutations(NODES).map(lambda p: list(p)).flatmap(
                lambda p: st.integers(1, len(p)).map(lambda k: p[:k])
            )),
            priority=draw(st.integers(0, 3)),
            pinned=draw(st.booleans()),
            memory=sizes[m],
        )
        for m in MODELS
    ]  # fmt: skip
    nodes = {}
    busy: dict[tuple[str, str], int] = {}
    for name in NODES:
        budget = draw(st.integers(1, 12)) * 100
        records = []
        used = 0
        for m in draw(st.lists(st.sampled_from(MODELS), unique=True)):
            if used + sizes[m] > budget:
                continue
            used += sizes[m]
            records.append(
                ModelRecord(
                    id=m,
                    state=draw(st.sampled_from(["ready", "ready", "ready", "loading"])),
                    source=m,
                    memory_bytes=sizes[m],
                    last_used_at=draw(st.floats(0, 100)),
                    in_flight=draw(st.sampled_from([0, 0, 0, 1])),
                    queued=draw(st.sampled_from([0, 0, 1])),
                )
            )
            if draw(st.integers(0, 4)) == 0:
                busy[(name, m)] = 1
        device = DeviceInfo(
            index=0, kind="cpu", name="x", memory_total=budget * 10, memory_free=budget * 10,
            memory_used_by_models=used, memory_budget=budget,
        )  # fmt: skip
        status = NodeStatus(name=name, version="0", engine="x", devices=[device], models=records)
        nodes[name] = settle(
            NodeState(name, f"http://{name}", up=draw(st.booleans() | st.just(True)), status=status)
        )
    snapshot = Snapshot(
        nodes=nodes,
        models=ModelsConfig(models=profiles),
        strategy=draw(st.sampled_from(["lru", "priority", "gdsf"])),
        placement=draw(st.sampled_from(["first-fit", "best-fit"])),
        load_speed={
            n: draw(st.sampled_from([1e8, 1e9, 5e9])) for n in NODES if draw(st.booleans())
        },
        load_start={
            n: draw(st.sampled_from([0.0, 3.0, 40.0])) for n in NODES if draw(st.booleans())
        },
    )
    return snapshot, busy


@st.composite
def counts(draw: Any) -> dict[tuple[str, str], tuple[float, float]]:
    return {
        (n, m): (draw(st.floats(0, 50)), clock.wall() - draw(st.floats(0, 7200)))
        for n in NODES
        for m in MODELS
        if draw(st.booleans())
    }


@settings(max_examples=500, deadline=None)
@given(fleets(), st.sampled_from(MODELS), counts())
def test_plan_never_evicts_pinned_or_busy_and_only_places_where_it_fits(
    fleet: tuple[Snapshot, dict[tuple[str, str], int]],
    model: str,
    uses: dict[tuple[str, str], tuple[float, float]],
) -> None:
    snapshot, busy = fleet
    decision = plan(snapshot, model, busy, uses=uses)
    if isinstance(decision, Placement):
        node = snapshot.nodes[decision.node]
        assert node.up
        assert decision.node in snapshot.allowed_nodes(model)
        record = node.record(model)
        if record is not None and record.state == "loading":
            assert decision.victims == ()
            return
        freed = 0
        for victim in decision.victims:
            victim_record = node.record(victim)
            assert victim_record is not None
            assert is_evictable(snapshot, decision.node, victim_record, busy)
            assert not snapshot.is_pinned(victim)
            assert busy.get((decision.node, victim), 0) == 0
            assert victim_record.in_flight == 0
            freed += victim_record.memory_bytes
        assert decision.needed <= free_bytes(snapshot, decision.node) + freed
    elif isinstance(decision.error, NoCapacity):
        # Nothing could make room: every allowed up node is too small even after evicting.
        for name in snapshot.allowed_nodes(model):
            node = snapshot.nodes[name]
            if not node.up:
                continue
            evictable = sum(
                r.memory_bytes for r in eviction_order(snapshot, name, busy, None, uses)
            )
            assert free_bytes(snapshot, name) + evictable < decision.error.extra[
                "needed_bytes"
            ] or (node.record(model) is not None)


@settings(max_examples=200, deadline=None)
@given(fleets(), st.sampled_from(MODELS), st.sampled_from(MODELS))
def test_loads_in_flight_reserve_their_memory(
    fleet: tuple[Snapshot, dict[tuple[str, str], int]], first: str, second: str
) -> None:
    snapshot, busy = fleet
    decision = plan(snapshot, first, busy)
    if not isinstance(decision, Placement) or first == second or decision.victims:
        return
    pending = {first: PendingLoad(first, decision.node, decision.needed, (), 0.0)}
    after = Snapshot(
        nodes=snapshot.nodes, models=snapshot.models, strategy=snapshot.strategy, pending=pending
    )
    follow = plan(after, second, busy)
    if isinstance(follow, Placement) and follow.node == decision.node and not follow.victims:
        record = snapshot.nodes[follow.node].record(second)
        if record is None or record.state != "loading":
            total = decision.needed + follow.needed
            assert total <= snapshot.nodes[follow.node].free_bytes()


def test_lru_and_priority_orders() -> None:
    def record(model: str, used: float) -> ModelRecord:
        return ModelRecord(
            id=model, state="ready", source=model, memory_bytes=100, last_used_at=used
        )

    status = NodeStatus(
        name="a", version="0", engine="x", devices=[],
        models=[record("old-high", 1), record("new-low", 9), record("mid-low", 5)],
    )  # fmt: skip
    profiles = ModelsConfig(
        models=[
            ModelProfile(id="old-high", priority=10),
            ModelProfile(id="new-low", priority=1),
            ModelProfile(id="mid-low", priority=1),
        ]
    )
    nodes = {"a": settle(NodeState("a", "http://a", up=True, status=status))}
    lru = Snapshot(nodes=nodes, models=profiles, strategy="lru")
    priority = Snapshot(nodes=nodes, models=profiles, strategy="priority")
    assert [r.id for r in eviction_order(lru, "a", {})] == ["old-high", "mid-low", "new-low"]
    assert [r.id for r in eviction_order(priority, "a", {})] == ["mid-low", "new-low", "old-high"]
    assert [r.id for r in eviction_order(lru, "a", {("a", "old-high"): 1})] == [
        "mid-low",
        "new-low",
    ]


def test_pick_ready_prefers_the_least_busy_node() -> None:
    def node(name: str, queued: int) -> NodeState:
        record = ModelRecord(id="m", state="ready", source="m", queued=queued)
        status = NodeStatus(name=name, version="0", engine="x", devices=[], models=[record])
        return settle(NodeState(name, f"http://{name}", up=True, status=status))

    snapshot = Snapshot(nodes={"a": node("a", 0), "b": node("b", 0)}, models=ModelsConfig())
    assert pick_ready(snapshot, "m", {}) == "a"
    assert pick_ready(snapshot, "m", {("a", "m"): 2}) == "b"
    assert pick_ready(snapshot, "m", {}, exclude="a") == "b"
    down = Snapshot(
        nodes={"a": node("a", 0), "b": NodeState("b", "http://b", up=False)}, models=ModelsConfig()
    )
    assert pick_ready(down, "m", {}, exclude="a") is None


def test_settle_puts_the_owners_loads_and_unloads_before_the_neurons_word() -> None:
    def record(model: str, state: Any) -> ModelRecord:
        return ModelRecord(id=model, state=state, source=model, memory_bytes=100)

    reported = [record("r", "ready"), record("f", "failed"), record("l", "loading"),
                record("u", "unloading"), record("e", "ready"), record("x", "ready")]  # fmt: skip
    status = NodeStatus(name="a", version="0", engine="x", devices=[], models=reported)
    node = NodeState("a", "http://a", up=True, status=status)
    settled = settle(node, loading=["r", "f", "new"], unloading=["e", "gone"])
    assert settled.states == {
        "r": ModelState.READY,  # the neuron says ready before the load reports back
        "f": ModelState.LOADING,  # a retry over the failed record
        "new": ModelState.LOADING,  # not reported yet
        "l": ModelState.LOADING,  # someone else's load (a preload)
        "u": ModelState.LEAVING,  # someone else's unload
        "e": ModelState.UNLOADING,  # this gateway's eviction wins over "ready"
        "gone": ModelState.UNLOADING,  # held until the unload reports back
        "x": ModelState.READY,
    }
    profiles = ModelsConfig(models=[ModelProfile(id=m) for m in ("e", "l")])
    snapshot = Snapshot(nodes={"a": settled}, models=profiles)
    assert snapshot.ready_on("e") == []
    assert [r.id for r in eviction_order(snapshot, "a", {})] == ["r", "x"]
    assert isinstance(plan(snapshot, "e", {}), Unplaceable)  # not where this gateway unloads it
    assert plan(snapshot, "l", {}) == Placement("a", 0)  # join the load under way


def test_a_neurons_busy_figure_taken_before_the_gateways_release_is_not_trusted() -> None:
    record = ModelRecord(id="m", state="ready", source="m", memory_bytes=100, in_flight=1)
    status = NodeStatus(name="a", version="0", engine="x", devices=[], models=[record])
    node = settle(NodeState("a", "http://a", up=True, status=status, last_seen=100.0))
    snapshot = Snapshot(nodes={"a": node}, models=ModelsConfig())
    # The reading (at t=100) counted a request the gateway ended at t=101: stale.
    assert is_evictable(snapshot, "a", record, {}, {("a", "m"): 101.0})
    # Ended before the reading: the request the neuron counts is someone else's.
    assert not is_evictable(snapshot, "a", record, {}, {("a", "m"): 99.0})
    assert not is_evictable(snapshot, "a", record, {})


def _node(name: str, budget: int, models: dict[str, tuple[int, float]]) -> NodeState:
    """A node with a memory budget and ready models: id → (bytes, last used)."""
    records = [
        ModelRecord(id=m, state="ready", source=m, memory_bytes=size, last_used_at=used)
        for m, (size, used) in models.items()
    ]
    used = sum(size for size, _ in models.values())
    device = DeviceInfo(
        index=0, kind="cuda", name="g", memory_total=budget, memory_free=budget - used,
        memory_used_by_models=used, memory_budget=budget,
    )  # fmt: skip
    status = NodeStatus(name=name, version="0", engine="x", devices=[device], models=records)
    return settle(NodeState(name, f"http://{name}", up=True, status=status))


def test_gdsf_evicts_the_least_requested_per_byte_lately() -> None:
    now = clock.wall()
    node = _node("a", 1000, {"big-rare": (500, 9.0), "small-hot": (100, 1.0), "mid": (300, 5.0)})
    snapshot = Snapshot({"a": node}, ModelsConfig(), strategy="gdsf")
    uses = {
        ("a", "big-rare"): (10.0, now),  # 10 requests over 500 bytes
        ("a", "small-hot"): (10.0, now),  # 10 over 100
        ("a", "mid"): (40.0, now - 2 * 3600),  # 40, two half-lives ago: 10 now, over 300
    }
    order = [r.id for r in eviction_order(snapshot, "a", {}, None, uses)]
    assert order == ["big-rare", "mid", "small-hot"]
    lru = [r.id for r in eviction_order(replace(snapshot, strategy="lru"), "a", {})]
    assert lru == ["small-hot", "mid", "big-rare"]


def test_gdsf_counts_the_seconds_a_model_takes_to_load_again_where_they_are_known() -> None:
    now = clock.wall()
    node = _node("a", 100 * GB, {"small-rare": (1 * GB, 1.0), "big-busy": (70 * GB, 2.0)})
    status = node.status
    assert status is not None
    node = replace(node, status=status.model_copy(update={"load_speed": 1e9}))
    uses = {("a", "small-rare"): (1.0, now), ("a", "big-busy"): (10.0, now)}
    classic = Snapshot({"a": node}, ModelsConfig(), strategy="gdsf")
    # Per byte alone, the 70 GB model goes first: 10 requests over 70 GB against 1 over 1 GB.
    assert next(r.id for r in eviction_order(classic, "a", {}, None, uses)) == "big-busy"
    # With a 10 s start-up timed, the small model's reload is 11 s for its 1 request; the big
    # one's is 80 s, for 10 requests: 11 against 800 seconds of loading, over their bytes.
    timed = replace(classic, load_start={"a": 10.0})
    order = [r.id for r in eviction_order(timed, "a", {}, None, uses)]
    assert order == ["small-rare", "big-busy"]


def test_best_fit_loads_where_it_is_ready_soonest_and_fits_tightest() -> None:
    models = ModelsConfig(models=[ModelProfile(id="new", memory=300)])
    nodes = {
        "roomy": _node("roomy", 1000, {}),
        "tight": _node("tight", 400, {}),
        "slow": _node("slow", 300, {}),
    }
    first = Snapshot(nodes, models)
    assert plan(first, "new", {}) == Placement("roomy", 300)  # first-fit: the first that fits
    best = replace(first, placement="best-fit")
    assert plan(best, "new", {}) == Placement("slow", 300)  # all unmeasured: tightest fit
    measured = replace(best, load_speed={"slow": 1e8, "roomy": 1e9, "tight": 1e9})
    assert plan(measured, "new", {}) == Placement("tight", 300)  # faster, then tighter
    # What a neuron reports of its read speed wins over what the gateway timed.
    slow = nodes["slow"]
    assert slow.status is not None
    status = slow.status.model_copy(update={"load_speed": 1e10})
    reported = replace(measured, nodes={**nodes, "slow": replace(slow, status=status)})
    assert plan(reported, "new", {}) == Placement("slow", 300)
    # A load already queued on a node counts: its start-up as learnt, and its bytes.
    queued = replace(
        reported,
        pending={"other": PendingLoad("other", "slow", 100, (), 0.0)},
        load_start={"slow": 1.0},
    )
    assert plan(queued, "new", {}) == Placement("tight", 300)


def test_best_fit_evicts_where_it_costs_least_across_the_fleet() -> None:
    models = ModelsConfig(models=[ModelProfile(id="new", memory=500)])
    nodes = {
        "a": _node("a", 500, {"used-lately": (500, 90.0)}),
        "b": _node("b", 500, {"idle-for-long": (500, 10.0)}),
    }
    first = Snapshot(nodes, models)
    assert plan(first, "new", {}) == Placement("a", 500, ("used-lately",))
    best = replace(first, placement="best-fit")
    assert plan(best, "new", {}) == Placement("b", 500, ("idle-for-long",))
    now = clock.wall()
    uses = {("a", "used-lately"): (1.0, now), ("b", "idle-for-long"): (30.0, now)}
    gdsf = replace(best, strategy="gdsf")
    assert plan(gdsf, "new", {}, uses=uses) == Placement("a", 500, ("used-lately",))


def test_a_node_s_load_speed_is_learnt_from_its_loads() -> None:
    snapshot = Snapshot({"a": _node("a", 10 * GB, {})}, ModelsConfig())
    load = PendingLoad("m", "a", 4_000_000_000, (), 0.0)
    once = learn_speed(snapshot, load, 4.0)
    assert once.load_speed == {"a": 1e9}
    twice = learn_speed(once, load, 1.0)
    assert twice.load_speed == {"a": 2.5e9}  # the average of the two
    assert learn_speed(twice, replace(load, wake=True), 0.1) is twice  # a wake is no load


def test_where_a_neuron_reports_its_read_speed_the_gateway_learns_its_start_up() -> None:
    node = _node("a", 10 * GB, {})
    assert node.status is not None
    node = replace(node, status=node.status.model_copy(update={"load_speed": 2e9}))
    snapshot = Snapshot({"a": node}, ModelsConfig())
    load = PendingLoad("m", "a", 4_000_000_000, (), 0.0)
    once = learn_speed(snapshot, load, 5.0)  # 2 s of reading at 2 GB/s, 3 s of start-up
    assert once.load_start == {"a": 3.0}
    assert once.load_speed == {}
    assert learn_speed(once, load, 3.0).load_start == {"a": 2.0}  # (3 + 1) / 2
    assert reload_seconds(once, "a", 2_000_000_000) == 4.0  # 3 s, then 1 s of bytes


def test_in_flight_counts_uses_with_a_half_life() -> None:
    times = iter([1000.0, 1000.0 + HALF_LIFE])
    clock.use(lambda: next(times), clock.monotonic)
    try:
        in_flight = InFlight(count_uses=True)
        in_flight.acquire("a", "m")
        in_flight.acquire("a", "m")  # one half-life later: 1 → 0.5, plus this one
    finally:
        clock.reset()
    assert frequency(in_flight.uses, "a", "m", 1000.0 + HALF_LIFE) == pytest.approx(1.5)
    assert frequency(in_flight.uses, "a", "m", 1000.0 + 2 * HALF_LIFE) == pytest.approx(0.75)
    assert frequency(in_flight.uses, "b", "m", 0.0) == 0.0
    plain = InFlight()  # lru and priority never read the counts: none are kept
    plain.acquire("a", "m")
    assert plain.uses == {}
    assert plain.busy == {("a", "m"): 1}


def test_a_model_queued_past_replica_after_wants_a_replica_up_to_max_replicas() -> None:
    def node(name: str, queued: int, wait: float) -> NodeState:
        record = ModelRecord(
            id="m", state="ready", source="m", memory_bytes=100, queued=queued, queue_wait=wait
        )
        status = NodeStatus(name=name, version="0", engine="x", devices=[], models=[record])
        return settle(NodeState(name, f"http://{name}", up=True, status=status))

    models = ModelsConfig(models=[ModelProfile(id="m")])
    rule = PlacementSection(replica_after=10.0, max_replicas=2)
    waiting = Snapshot({"a": node("a", 3, 12.0), "b": NodeState("b", "http://b", up=True)}, models)
    assert replicas_wanted(waiting, "a", rule) == ["m"]
    assert replicas_wanted(waiting, "a", PlacementSection(replica_after=0)) == []  # off
    short = Snapshot({"a": node("a", 3, 4.0)}, models)
    assert replicas_wanted(short, "a", rule) == []  # not waited long enough
    loading = replace(waiting, pending={"m": PendingLoad("m", "b", 100, (), 0.0)})
    assert replicas_wanted(loading, "a", rule) == []  # one is on its way
    both = Snapshot({"a": node("a", 3, 12.0), "b": node("b", 0, 0.0)}, models)
    assert replicas_wanted(both, "a", rule) == []  # max_replicas reached
