"""Fleet lifecycle events: what changed between two snapshots, and the bus that keeps them."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from cortex.config import ModelsConfig
from cortex.gateway.events import FleetEvent, FleetEvents, changes
from cortex.gateway.state import ModelState, NodeState, PendingLoad, Snapshot
from cortex.protocol.fleet import FleetProgress

READY, LOADING, UNLOADING = ModelState.READY, ModelState.LOADING, ModelState.UNLOADING


def _snap(states: dict[str, ModelState], *, up: bool = True, **fields: object) -> Snapshot:
    node = NodeState("a", "http://a", up=up, states=states, error=None if up else "refused")
    return Snapshot(nodes={"a": node}, models=ModelsConfig(models=[]), **fields)  # type: ignore[arg-type]


def _kinds(before: Snapshot, after: Snapshot) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in changes(before, after)]


def test_a_load_that_evicts_then_succeeds() -> None:
    start = _snap({"m1": READY, "m2": READY})
    load = PendingLoad("m3", "a", 100, ("m1",), 0.0)
    placing = _snap({"m1": UNLOADING, "m2": READY, "m3": LOADING}, pending={"m3": load})
    assert _kinds(start, placing) == [
        ("evicting", "m1 on a: evicted (lru) to make room for m3"),
        ("loading", "loading m3 on a, evicting m1"),
    ]
    done = _snap({"m2": READY, "m3": READY})
    assert _kinds(placing, done) == [
        ("unloaded", "m1 is no longer on a"),
        ("loaded", "m3 is ready on a"),
    ]


def test_a_failed_load_a_wake_and_a_node_going_down() -> None:
    assert _kinds(_snap({"m1": LOADING}), _snap({"m1": ModelState.FAILED})) == [
        ("load_failed", "m1 failed on a: the neuron gave no reason")
    ]
    wake = PendingLoad("m1", "a", 0, (), 0.0, wake=True)
    asleep = _snap({"m1": ModelState.SLEEPING})
    assert _kinds(asleep, _snap({"m1": LOADING}, pending={"m1": wake})) == [
        ("waking", "waking m1 on a")
    ]
    assert _kinds(_snap({}), _snap({}, up=False)) == [("node_down", "a is down: refused")]
    assert _kinds(_snap({}, up=False), _snap({})) == [("node_up", "a is up")]
    same = _snap({"m1": READY})
    assert changes(same, replace(same, version=same.version + 1)) == []


def test_the_bus_keeps_a_backlog_numbers_events_and_drops_a_listener_that_falls_behind() -> None:
    async def scenario() -> None:
        bus = FleetEvents()
        bus.publish(FleetEvent("node_up", "a is up", node="a"))
        backlog = [chunk async for chunk in bus.stream(follow=False)]
        assert len(backlog) == 1
        assert b"event: node_up" in backlog[0]
        assert b'"seq": 1' in backlog[0] or b'"seq":1' in backlog[0]
        stream = bus.stream()
        first = await anext(stream)  # the backlog; the listener is registered now
        assert b"node_up" in first
        for i in range(1001):  # more than a listener may fall behind
            bus.publish(FleetEvent("loaded", f"m{i} is ready on a"))
        got = [chunk async for chunk in stream]  # what it had queued, then the end
        assert len(got) == 1000
        assert [e.seq for e in bus.backlog][-1] == 1002

    asyncio.run(scenario())


def test_a_load_s_progress_is_an_event_with_its_stage_but_placing_is_not() -> None:
    bus = FleetEvents()
    bus.progress(FleetProgress(model="m1", node="a", stage="placing", message="placing on a"))
    bus.progress(FleetProgress(model="m1", node="a", stage="loading", message="reading weights"))
    (event,) = bus.backlog  # placing is already said by the `loading` lifecycle event
    assert (event.kind, event.stage, event.seq) == ("progress", "loading", 1)
    assert event.message == "m1 on a: reading weights"
    assert (event.model, event.node) == ("m1", "a")
    assert event.as_dict()["stage"] == "loading"
