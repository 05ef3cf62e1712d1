"""The fleet owner against in-memory neurons: single flight, budgets, pins, failures."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex import sse
from cortex.config import CortexConfig, GatewaySection, ModelProfile, ModelsConfig, NeuronEntry
from cortex.errors import CortexError, NeuronUnavailable, NoCapacity
from cortex.gateway.catalogue import fleet_view
from cortex.gateway.fleet import Fleet
from cortex.gateway.inflight import InFlight
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.state import ModelState, NodeState
from cortex.protocol.fleet import FleetProgress, FleetView
from cortex.protocol.lifecycle import ModelRecord
from tests.gateway.fakes import FakeNeurons

SIZES = {"m0": 300, "m1": 300, "m2": 400, "m3": 200, "big": 5000}


def _fleet(fakes: FakeNeurons, profiles: list[ModelProfile], strategy: str = "lru") -> Fleet:
    config = CortexConfig.model_validate(
        {
            "gateway": GatewaySection(poll_interval=0.05),
            "eviction": {"strategy": strategy, "defrag_after_cycles": 2},
            "neurons": [NeuronEntry(name=n, endpoint=f"http://{n}:1") for n in fakes.nodes],
        }
    )
    return Fleet(config, ModelsConfig(models=profiles), GatewayMetrics(), client=fakes)  # type: ignore[arg-type]


async def _with_fleet(fleet: Fleet, work: Any) -> Any:
    await fleet.start()
    try:
        return await work()
    finally:
        await fleet.aclose()


async def test_concurrent_requests_for_a_cold_model_share_one_load() -> None:
    fakes = FakeNeurons({"a": 1000, "b": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0", neurons=["b", "a"])])

    async def work() -> list[str]:
        return list(await asyncio.gather(*(fleet.ensure("m0", lease=False) for _ in range(20))))

    nodes = await _with_fleet(fleet, work)
    assert nodes == ["b"] * 20
    assert fakes.loads == [("b", "m0")]


async def test_pinned_models_load_at_start_and_come_back_after_a_restart() -> None:
    fakes = FakeNeurons({"a": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m3", pinned=True), ModelProfile(id="m0")])

    async def work() -> None:
        await _until(lambda: fleet.snapshot.ready_on("m3") == ["a"])
        fakes.nodes["a"].up = False
        await _until(lambda: not fleet.snapshot.nodes["a"].up)
        fakes.nodes["a"].models.clear()  # the neuron restarted empty
        fakes.nodes["a"].up = True
        await _until(lambda: fleet.snapshot.ready_on("m3") == ["a"])

    await _with_fleet(fleet, work)
    assert fakes.loads == [("a", "m3"), ("a", "m3")]


async def test_a_slow_poll_does_not_hide_a_model_loaded_meanwhile() -> None:
    fakes = FakeNeurons({"a": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0")])

    async def work() -> None:
        fakes.node_delays = [0.4]  # the next poll reads the node, then answers late
        await asyncio.sleep(0.15)
        await fleet.ensure("m0", lease=False)  # loaded while that poll is in flight
        for _ in range(100):  # the stale poll arrives meanwhile; m0 must never vanish
            assert fleet.snapshot.ready_on("m0") == ["a"]
            await asyncio.sleep(0.005)

    await _with_fleet(fleet, work)


async def test_a_node_is_defragmented_after_its_eviction_cycles() -> None:
    fakes = FakeNeurons({"a": 300}, SIZES)  # one model at a time: every load evicts
    fleet = _fleet(fakes, [ModelProfile(id=m, memory=SIZES[m]) for m in ("m0", "m1", "m3")])

    async def work() -> None:
        for model in ("m0", "m1", "m3", "m0", "m1"):
            await fleet.ensure(model, lease=False)

    await _with_fleet(fleet, work)
    assert len(fakes.unloads) == 4
    assert fakes.defrags == ["a", "a"]  # defrag_after_cycles = 2


async def test_no_capacity_names_needed_and_largest_free() -> None:
    fakes = FakeNeurons({"a": 1000, "b": 800}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="big", memory=5000)])

    async def work() -> CortexError:
        try:
            await fleet.ensure("big")
        except CortexError as exc:
            return exc
        raise AssertionError("placed a model that fits nowhere")

    error = await _with_fleet(fleet, work)
    assert isinstance(error, NoCapacity)
    assert error.status == 503
    assert error.extra == {"needed_bytes": 5000, "largest_free_bytes": 1000}


async def test_underestimated_size_is_learnt_from_the_neurons_507() -> None:
    # No size known up front: the neuron's 507 teaches the gateway, which then evicts.
    fakes = FakeNeurons({"a": 600}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0"), ModelProfile(id="m2")])

    async def work() -> str:
        await fleet.ensure("m0", lease=False)
        return await fleet.ensure("m2", lease=False)

    assert await _with_fleet(fleet, work) == "a"
    assert fakes.unloads == [("a", "m0")]
    assert set(fakes.nodes["a"].models) == {"m2"}


class DyingNeurons(FakeNeurons):
    """Nodes in ``dying`` fail each load: they die mid-load, or answer 503 if they stay up."""

    def __init__(self, *args: Any, dying: set[str], stay_up: bool = False) -> None:
        super().__init__(*args)
        self.dying = dying
        self.stay_up = stay_up
        self.failed: list[str] = []

    async def load(
        self, node: Any, model: str, source: str, progress: Any = None, **kwargs: Any
    ) -> Any:
        if node.name not in self.dying:
            return await super().load(node, model, source, progress, **kwargs)
        await asyncio.sleep(0.05)
        self.failed.append(node.name)
        self.nodes[node.name].up = self.stay_up
        raise NeuronUnavailable(f"Node {node.name} failed while loading {model!r}")


@pytest.mark.parametrize("stay_up", [False, True], ids=["killed", "answers-503"])
async def test_a_load_whose_node_fails_is_placed_again_on_another(stay_up: bool) -> None:
    fakes = DyingNeurons({"a": 1000, "b": 1000, "c": 1000}, SIZES, dying={"a"}, stay_up=stay_up)
    fleet = _fleet(fakes, [ModelProfile(id="m0", neurons=["a", "b"])])

    async def work() -> tuple[list[str], BaseException | None]:
        there = fleet.ensure("m0", "a", lease=False)  # asked for "a": it may go nowhere else
        results = await asyncio.gather(
            *(fleet.ensure("m0", lease=False) for _ in range(3)), there, return_exceptions=True
        )
        later = await fleet.ensure("m0", lease=False)  # ready on b now: no new load
        return [*results[:3], later], results[3] if isinstance(results[3], Exception) else None

    nodes, refused = await _with_fleet(fleet, work)
    assert nodes == ["b"] * 4
    assert isinstance(refused, NeuronUnavailable)
    assert fakes.failed == ["a"]
    assert fakes.loads == [("b", "m0")]


async def test_a_load_that_fails_on_every_allowed_node_says_why() -> None:
    fakes = DyingNeurons({"a": 1000, "b": 1000}, SIZES, dying={"a", "b"}, stay_up=True)
    fleet = _fleet(fakes, [ModelProfile(id="m0", neurons=["a", "b"])])

    async def work() -> BaseException:
        try:
            await fleet.ensure("m0", lease=False)
        except NeuronUnavailable as exc:
            return exc
        raise AssertionError("loaded on a failing node")

    error = await _with_fleet(fleet, work)
    assert "b failed while loading" in str(error)
    assert fakes.failed == ["a", "b"]  # each tried once


class BuggyNeurons(FakeNeurons):
    """A client whose load raises what no client should: a bug, not a CortexError."""

    async def load(self, node: NodeState, model: str, *args: Any, **kwargs: Any) -> ModelRecord:
        raise KeyError(model)


async def test_a_bug_in_a_load_fails_its_waiters_instead_of_leaving_them_hanging() -> None:
    fakes = BuggyNeurons({"a": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0", neurons=["a"])])

    async def work() -> BaseException:
        try:
            await asyncio.wait_for(fleet.ensure("m0", lease=False), 5)
        except NeuronUnavailable as exc:
            return exc
        raise AssertionError("loaded with a broken client")

    error = await _with_fleet(fleet, work)
    assert "KeyError('m0')" in str(error)


async def test_model_states_follow_a_load_and_the_eviction_it_needs() -> None:
    fakes = FakeNeurons({"a": 500}, SIZES)  # room for one of m0, m1
    fleet = _fleet(fakes, [ModelProfile(id=m, memory=SIZES[m]) for m in ("m0", "m1")])

    async def work() -> None:
        await fleet.ensure("m0", lease=False)
        assert fleet.snapshot.nodes["a"].states == {"m0": ModelState.READY}
        fakes.load_delay = 0.3
        load = asyncio.ensure_future(fleet.ensure("m1", lease=False))
        await _until(lambda: "m1" in fleet.snapshot.pending)
        states = {"m0": ModelState.UNLOADING, "m1": ModelState.LOADING}
        assert fleet.snapshot.nodes["a"].states == states
        assert fleet.snapshot.ready_on("m0") == []
        await asyncio.sleep(0.15)  # polls now say m0 is gone: the eviction still holds it
        assert fakes.unloads == [("a", "m0")]
        assert fleet.snapshot.nodes["a"].states == states
        assert await load == "a"
        assert fleet.snapshot.nodes["a"].states == {"m1": ModelState.READY}

    await _with_fleet(fleet, work)


async def test_load_progress_reaches_the_listeners_through_the_owner() -> None:
    fakes = FakeNeurons({"a": 300}, SIZES)  # one model at a time: m1 evicts m0
    fleet = _fleet(fakes, [ModelProfile(id=m, memory=SIZES[m]) for m in ("m0", "m1")])
    events: list[FleetProgress] = []

    async def work() -> None:
        await fleet.ensure("m0", lease=False)
        await fleet.ensure("m1", listener=events.append, lease=False)

    await _with_fleet(fleet, work)
    assert [(e.stage, e.message) for e in events] == [
        ("placing", "placing on a, evicting m0"),
        ("evicting", "unloading m0 from a"),
    ]


async def test_pin_answers_once_the_owner_has_applied_it() -> None:
    fakes = FakeNeurons({"a": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0")])

    async def work() -> None:
        fakes.load_delay = 0.2
        await fleet.pin("m0", True)
        assert fleet.snapshot.is_pinned("m0")
        assert "m0" in fleet.snapshot.pending  # and the load it calls for is under way
        assert fleet.snapshot.nodes["a"].state("m0") is ModelState.LOADING
        await fleet.pin("m0", False)
        assert not fleet.snapshot.is_pinned("m0")

    await _with_fleet(fleet, work)


def test_in_flight_counts_each_request_and_stamps_its_end() -> None:
    in_flight = InFlight()
    in_flight.acquire("a", "m0")
    in_flight.acquire("a", "m0")
    assert in_flight.busy == {("a", "m0"): 2}
    assert in_flight.last_used == {}
    in_flight.release("a", "m0")
    in_flight.release("a", "m0")
    assert in_flight.busy == {}  # no zero counts left behind
    assert set(in_flight.last_used) == {("a", "m0")}
    with pytest.raises(TypeError):
        in_flight.busy[("a", "m0")] = 1  # type: ignore[index]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budgets=st.lists(st.integers(3, 10), min_size=1, max_size=3),
    requests=st.lists(st.sampled_from(["m0", "m1", "m2", "m3"]), min_size=1, max_size=25),
    pinned=st.sets(st.sampled_from(["m0", "m1", "m2", "m3"]), max_size=1),
    seed=st.integers(0, 1000),
)
def test_random_workloads_keep_every_invariant(
    budgets: list[int], requests: list[str], pinned: set[str], seed: int
) -> None:
    names = ["a", "b", "c"][: len(budgets)]
    fakes = FakeNeurons({n: b * 100 for n, b in zip(names, budgets, strict=True)}, SIZES, seed=seed)
    profiles = [
        ModelProfile(id=m, memory=SIZES[m], pinned=m in pinned, priority=i)
        for i, m in enumerate(["m0", "m1", "m2", "m3"])
    ]
    fleet = _fleet(fakes, profiles, strategy=random.Random(seed).choice(["lru", "priority"]))
    rng = random.Random(seed)

    async def one(model: str) -> None:
        await asyncio.sleep(rng.uniform(0, 0.02))
        try:
            node = await fleet.ensure(model)  # leased: counted in flight, so never evicted now
        except CortexError:
            return
        try:
            await asyncio.sleep(rng.uniform(0, 0.01))
            assert model in fakes.nodes[node].models
        finally:
            fleet.in_flight.release(node, model)

    async def work() -> None:
        await asyncio.gather(*(one(m) for m in requests))

    asyncio.run(_with_fleet(fleet, work))
    assert all(count <= 1 for count in fakes.max_parallel_loads.values())
    assert fakes.over_budget == []
    evicted = {model for _, model in fakes.unloads}
    assert not evicted & pinned


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_profiles_load_options_go_with_its_loads() -> None:
    fakes = FakeNeurons({"a": 1000}, SIZES)
    profiles = [
        ModelProfile(id="m0", kv_cache_bytes=64, engine="vllm", tp=2, quant="awq"),
        ModelProfile(id="m3"),
    ]
    fleet = _fleet(fakes, profiles)

    async def work() -> None:
        await fleet.ensure("m0", lease=False)
        await fleet.ensure("m3", lease=False)

    await _with_fleet(fleet, work)
    assert fakes.loads == [("a", "m0"), ("a", "m3")]
    assert fakes.kv_cache_bytes == [64, None]
    assert fakes.options == [{"kv_cache_bytes": 64, "engine": "vllm", "tp": 2, "quant": "awq"}, {}]


@pytest.mark.parametrize("kv_cache_bytes", [None, 2 * 1024**3])
async def test_the_load_body_names_kv_cache_bytes_only_when_set(
    kv_cache_bytes: int | None,
) -> None:
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        record = ModelRecord(id="m0", state="ready", source="org/m0")
        content = sse.frame(record.model_dump_json().encode(), "record")
        return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})

    client = NeuronClient(poll_timeout=1, load_timeout=1)
    await client.aclose()
    client._http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    try:
        node = NodeState("a", "http://a:1")
        options = {} if kv_cache_bytes is None else {"kv_cache_bytes": kv_cache_bytes}
        record = await client.load(node, "m0", "org/m0", options=options)
    finally:
        await client.aclose()
    assert record.id == "m0"
    expected: dict[str, Any] = {"model": "m0", "source": "org/m0"}
    if kv_cache_bytes is not None:
        expected["kv_cache_bytes"] = kv_cache_bytes
    assert bodies == [expected]


async def test_the_neurons_kv_figures_reach_the_fleet_view() -> None:
    fakes = FakeNeurons({"a": 1000}, SIZES)
    fleet = _fleet(fakes, [ModelProfile(id="m0")])
    kv = {
        "kv_cache_bytes": 96, "kv_block_size": 16, "kv_blocks_total": 64,
        "kv_blocks_used": 5, "prefix_cache_hit_ratio": 0.75,
    }  # fmt: skip

    async def work() -> FleetView:
        await fleet.ensure("m0", lease=False)
        models = fakes.nodes["a"].models
        models["m0"] = models["m0"].model_copy(update=kv)  # the neuron's next /node says so
        await _until(lambda: fleet.snapshot.nodes["a"].record("m0").kv_blocks_total == 64)  # type: ignore[union-attr]
        return FleetView.model_validate_json(fleet_view(fleet.snapshot).model_dump_json())

    view = await _with_fleet(fleet, work)
    (record,) = view.nodes[0].models
    assert {key: getattr(record, key) for key in kv} == kv


@pytest.mark.parametrize("host_room", [True, False], ids=["host-room", "no-host-room"])
async def test_an_evicted_model_that_can_sleep_sleeps_and_wakes_instead_of_loading(
    host_room: bool,
) -> None:
    """Sleep as a memory tier: a victim whose engine can sleep, on a node whose host memory
    has room for its weights, goes to sleep instead of being unloaded; asked for again, it
    is woken (a wake, timed under kind="wake"), not loaded from disk."""
    fakes = FakeNeurons({"a": 500}, SIZES)
    fakes.can_sleep = {"m0"}
    fakes.host_memory_free = 10_000 if host_room else 100
    fleet = _fleet(fakes, [ModelProfile(id="m0"), ModelProfile(id="m2")])

    async def work() -> None:
        await fleet.ensure("m0", lease=False)
        await fleet.ensure("m2", lease=False)  # 300 + 400 > 500: m0 makes room
        await fleet.ensure("m0", lease=False)  # m2 makes room in turn

    await _with_fleet(fleet, work)
    if host_room:
        assert fakes.sleeps == [("a", "m0")]
        assert fakes.wakes == [("a", "m0")]
        assert fakes.loads == [("a", "m0"), ("a", "m2")]
        assert fakes.unloads == [("a", "m2")]
    else:
        assert (fakes.sleeps, fakes.wakes) == ([], [])
        assert fakes.loads == [("a", "m0"), ("a", "m2"), ("a", "m0")]
        assert fakes.unloads == [("a", "m0"), ("a", "m2")]
    assert fakes.over_budget == []
    samples = fleet.metrics.render().decode()
    wakes = 'cortex_model_load_duration_seconds_count{kind="wake",model="m0",node="a"} 1.0'
    assert (wakes in samples) is host_room
