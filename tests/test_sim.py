"""The fleet simulator's accounting, on traces whose answers are known by hand, and its
command line. The simulations run the gateway's real fleet owner on virtual time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cortex.sim import run as sim_run
from cortex.sim.neurons import LOAD_OVERHEAD, SLOTS, UNLOAD_SECONDS, NodeSpec
from cortex.sim.policies import POLICIES
from cortex.sim.run import Policy, home_nodes, run
from cortex.sim.trace import GB, Trace, generate, read_jsonl, write_jsonl

BANDWIDTH = 1 * GB  # a 6 GB model loads in LOAD_OVERHEAD + 6 s
HBM = 100 * GB  # a 1 GB model decodes 100 tokens/s per stream


def _trace(rows: list[tuple[float, int, int, int]], sizes: list[float]) -> Trace:
    return Trace(
        t=np.array([r[0] for r in rows], dtype=np.float64),
        model=np.array([r[1] for r in rows], dtype=np.int32),
        prompt_tokens=np.array([r[2] for r in rows], dtype=np.int32),
        output_tokens=np.array([r[3] for r in rows], dtype=np.int32),
        models=tuple(f"m{i}" for i in range(len(sizes))),
        sizes=tuple(int(gb * GB) for gb in sizes),
    )


def _node(name: str, gb: float) -> NodeSpec:
    return NodeSpec(name, int(gb * GB), BANDWIDTH, HBM)


LOAD_6GB = LOAD_OVERHEAD + 6.0


def test_two_models_that_do_not_fit_together_swap_on_one_node() -> None:
    # A, then B (evicting A), then A again (evicting B): three loads, two LRU evictions.
    trace = _trace([(0, 0, 0, 100), (100, 1, 0, 100), (200, 0, 0, 100)], [6, 6])
    result = run(trace, [_node("n", 10)], Policy("cortex-lru")).summary()
    assert result["cold_loads"] == 3
    assert result["cold_loads_per_1000"] == 1000.0
    assert result["evictions"] == {"lru": 2}
    assert result["refused"] == result["timed_out"] == 0
    assert result["cold_starts"] == 3
    # The first waits for its load; the others for an unload, then their load.
    assert result["cold_start_p50_s"] == pytest.approx(LOAD_6GB + UNLOAD_SECONDS, abs=0.01)
    # A 6 GB model decodes at HBM / 6 GB tokens/s: 100 tokens take 6 s; nothing queued.
    assert result["queue_wait_p95_s"] == pytest.approx(LOAD_6GB + UNLOAD_SECONDS, abs=0.01)


def test_a_second_node_keeps_both_and_a_ready_model_is_not_loaded_again() -> None:
    trace = _trace([(0, 0, 0, 10), (100, 1, 0, 10), (200, 0, 0, 10), (300, 1, 0, 10)], [6, 6])
    result = run(trace, [_node("a", 10), _node("b", 10)], Policy("cortex-lru")).summary()
    assert result["cold_loads"] == 2
    assert result["evictions"] == {}
    assert result["cold_starts"] == 2
    assert result["cold_start_p95_s"] == pytest.approx(LOAD_6GB, abs=0.01)


def test_too_big_is_refused_and_too_slow_times_out() -> None:
    trace = _trace([(0, 0, 0, 10), (10, 1, 0, 10)], [20, 6])
    result = run(trace, [_node("n", 10)], Policy("cortex-lru"), timeout=5.0).summary()
    assert result["refused"] == 1  # 20 GB fits no node
    assert result["timed_out"] == 1  # its load takes 9 s, past the 5 s a request may wait
    assert result["cold_starts"] == 0


def test_a_full_batch_makes_the_next_request_wait_one_service_time() -> None:
    warm = [(0.0, 0, 0, 1)]
    burst = [(100.0, 0, 0, 100)] * (SLOTS + 1)  # a 1 GB model: 100 tokens in 1 s
    result = run(_trace(warm + burst, [1]), [_node("n", 10)], Policy("cortex-lru"))
    assert result.queue_waits[0] == pytest.approx(LOAD_OVERHEAD + 1.0)  # the warm one's load
    waits = sorted(result.queue_waits[1:])
    assert waits[-1] == pytest.approx(1.0, abs=1e-6)  # the one past the batch
    assert waits[-2] == pytest.approx(0.0, abs=1e-6)
    assert result.served == SLOTS + 2


def test_per_host_keeps_each_model_on_its_home_even_when_another_node_is_free() -> None:
    trace = _trace([(0, 0, 0, 10), (100, 1, 0, 10), (200, 0, 0, 10)], [6, 6])
    nodes = [_node("a", 10), _node("b", 10)]
    homes = home_nodes(trace, nodes)
    assert homes["m0"] == homes["m1"]  # the seeded draw: both on one node
    thrash = run(trace, nodes, POLICIES["per-host-lru"]).summary()
    assert thrash["cold_loads"] == 3  # they share a home: they swap, the other node idles
    assert run(trace, nodes, POLICIES["cortex-lru"]).summary()["cold_loads"] == 2


def test_memory_is_sampled_over_time() -> None:
    rows = [(float(t), 0, 0, 10) for t in range(0, 3600, 60)]
    result = run(_trace(rows, [5]), [_node("n", 10)], Policy("cortex-lru")).summary()
    series = result["memory_used_series"]
    assert len(series) == pytest.approx(3600 / sim_run.SAMPLE_EVERY, abs=1)
    assert series[-1] == pytest.approx(0.5)


def test_generated_traces_and_jsonl_round_trip(tmp_path: Path) -> None:
    for kind, arrivals in [("zipf", "steady"), ("sessions", "diurnal"), ("zipf", "bursty")]:
        trace = generate(kind, requests=5000, models=20, duration=3600, arrivals_kind=arrivals)
        assert len(trace) == 5000
        assert np.all(np.diff(trace.t) >= 0)
        counts = np.bincount(trace.model, minlength=20)
        assert counts[0] > counts[10] > 0  # popularity falls with rank
        assert all(1 * GB <= size <= 70 * GB for size in trace.sizes)
    path = tmp_path / "trace.jsonl"
    write_jsonl(trace, path)
    again = read_jsonl(path)
    assert len(again) == len(trace)
    assert again.sizes[again.models.index(trace.models[0])] == trace.sizes[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "model": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_jsonl(bad)


def test_the_command_line_prints_one_object_per_policy(tmp_path: Path) -> None:
    args = ["--requests", "3000", "--hours", "0.5", "--nodes", "8", "--models", "30", "--json"]
    shown = subprocess.run(
        [sys.executable, "-m", "cortex.sim", *args], capture_output=True, text=True, check=True
    )
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["policy"] for r in rows] == list(POLICIES)
    for row in rows:
        for key in ("cold_loads_per_1000", "cold_start_p95_s", "refused", "queue_wait_p95_s"):
            assert isinstance(row[key], int | float)
        assert isinstance(row["evictions"], dict)
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "cortex",
            "sim",
            *args[:-1],
            "--policies",
            "per-host-lru,cortex-lru",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "best cortex policy: cortex-lru" in table.stdout
    per_host, cortex = (
        next(r for r in rows if r["policy"] == name) for name in ("per-host-lru", "cortex-lru")
    )
    assert (
        f"vs per-host-lru: cold loads {cortex['cold_loads']:,} against {per_host['cold_loads']:,}"
        in table.stdout
    )
    bad_speeds = subprocess.run(
        [sys.executable, "-m", "cortex.sim", "--speeds", "fast"], capture_output=True, text=True
    )
    assert bad_speeds.returncode == 2
    assert "known, timed, unknown" in bad_speeds.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "cortex.sim", "--policies", "nope"], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "unknown policy nope" in refused.stderr


def test_a_queue_past_replica_after_brings_a_second_replica() -> None:
    # 2 requests/s for 100 s, each 30 s of decoding: 60 at once wanted, 32 slots per copy.
    rows = [(t / 2, 0, 0, 3000) for t in range(200)]
    trace = _trace(rows, [1])
    nodes = [_node("a", 10), _node("b", 10)]
    one = run(trace, nodes, Policy("one"), poll_interval=2.0).summary()
    two = run(trace, nodes, Policy("two", replica_after=5.0), poll_interval=2.0).summary()
    assert one["cold_loads"] == 1
    assert two["cold_loads"] == 1  # the replica is no cold start: nobody waited for it
    assert two["replica_loads"] == 1
    assert two["queue_wait_p95_s"] < one["queue_wait_p95_s"] / 2
    assert two["evictions"] == {}


def test_best_fit_loads_on_the_node_that_reads_fastest_once_it_is_known() -> None:
    # Two nodes, one reading at 1 GB/s and one at 6 GB/s; one 12 GB model, asked for twice:
    # at 0 s and again after the first node's first poll.
    slow = NodeSpec("slow", 100 * GB, 1 * GB, HBM)
    fast = NodeSpec("fast", 100 * GB, 6 * GB, HBM)
    trace = _trace([(0, 0, 0, 10)], [12])
    best = Policy("cortex-best-lru", placement="best-fit")
    # Known (neuron.toml's load_speed): the fast node, 3 s + 12 GB at 6 GB/s.
    known = run(trace, [slow, fast], best, speeds="known").summary()
    assert known["cold_start_p95_s"] == pytest.approx(LOAD_OVERHEAD + 2.0, abs=0.01)
    # Unknown until timed: both look alike, and the tighter fit, the first in order, wins.
    blind = run(trace, [slow, fast], best, speeds="timed").summary()
    assert blind["cold_start_p95_s"] == pytest.approx(LOAD_OVERHEAD + 12.0, abs=0.01)
    # first-fit takes the first node whatever it knows.
    first = run(trace, [slow, fast], Policy("cortex-lru"), speeds="known").summary()
    assert first["cold_start_p95_s"] == pytest.approx(LOAD_OVERHEAD + 12.0, abs=0.01)


def test_per_host_ttl_unloads_a_model_idle_past_keep_alive_and_loads_it_again() -> None:
    # 1 GB, 10 tokens: each request takes 0.1 s. Idle 99.9 s, then 399.9 s: past the 300 s.
    trace = _trace([(0, 0, 0, 10), (100, 0, 0, 10), (500, 0, 0, 10)], [1])
    ttl = run(trace, [_node("n", 10)], POLICIES["per-host-ttl"]).summary()
    assert ttl["cold_loads"] == 2
    assert ttl["evictions"] == {"keep_alive": 1}
    assert ttl["cold_starts"] == 2
    assert ttl["cold_start_p95_s"] == pytest.approx(LOAD_OVERHEAD + 1.0, abs=0.01)
    kept = run(trace, [_node("n", 10)], POLICIES["per-host-lru"]).summary()
    assert kept["cold_loads"] == 1
    assert kept["evictions"] == {}


def test_a_keep_alive_expiry_during_an_eviction_of_the_same_model_is_one_unload() -> None:
    # m0 (6 GB) is ready at 9 s and done at 9.6 s, so it would expire at 309.6 s; m1 arrives
    # at 309.5 s and evicts it, an unload of 0.5 s that the expiry falls inside.
    trace = _trace([(0, 0, 0, 10), (309.5, 1, 0, 10)], [6, 6])
    result = run(trace, [_node("n", 10)], POLICIES["per-host-ttl"], poll_interval=2.0)
    summary = result.summary()
    assert result.served == 2
    assert summary["timed_out"] == summary["refused"] == 0
    assert summary["cold_loads"] == 2
    assert summary["evictions"] == {"lru": 1}


def test_the_best_cortex_policy_is_one_that_meets_the_goal_before_one_with_fewest_loads() -> None:
    from cortex.sim.cli import _comparison

    def row(policy: str, loads: int, p95: float) -> dict[str, object]:
        per_1000 = loads / 1000
        return {"policy": policy, "cold_loads": loads, "cold_loads_per_1000": per_1000,
                "cold_start_p95_s": p95}  # fmt: skip

    rows = [row("per-host-lru", 1000, 36.5), row("cortex-a", 400, 60.0), row("cortex-b", 500, 15.0)]
    lines = _comparison(rows)
    assert lines[0] == "best cortex policy: cortex-b"  # 50% fewer and sooner; a is not sooner
    assert lines[1] == (
        "vs per-host-lru: cold loads 500 against 1,000 (50% fewer), "
        "cold-start p95 15.0 s against 36.5 s"
    )
    # When none meets both, the fewest cold loads.
    assert _comparison(rows[:2])[0] == "best cortex policy: cortex-a"
