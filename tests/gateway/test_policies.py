"""Routing and eviction are pure functions; their invariants hold for random fleets."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.config import ModelProfile, ModelsConfig
from cortex.errors import NoCapacity
from cortex.gateway.evictor import eviction_order, is_evictable
from cortex.gateway.router import Placement, Unplaceable, free_bytes, pick_ready, plan
from cortex.gateway.state import ModelState, NodeState, PendingLoad, Snapshot, settle
from cortex.protocol.lifecycle import DeviceInfo, ModelRecord, NodeStatus

MODELS = [f"m{i}" for i in range(6)]
NODES = ["a", "b", "c"]


@st.composite
def fleets(draw: Any) -> tuple[Snapshot, dict[tuple[str, str], int]]:
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
        strategy=draw(st.sampled_from(["lru", "priority"])),
    )
    return snapshot, busy


@settings(max_examples=300, deadline=None)
@given(fleets(), st.sampled_from(MODELS))
def test_plan_never_evicts_pinned_or_busy_and_only_places_where_it_fits(
    fleet: tuple[Snapshot, dict[tuple[str, str], int]], model: str
) -> None:
    snapshot, busy = fleet
    decision = plan(snapshot, model, busy)
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
            evictable = sum(r.memory_bytes for r in eviction_order(snapshot, name, busy))
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
