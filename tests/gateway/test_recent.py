"""The last minutes of traffic per model, as the web console shows them (``/fleet/stats``)."""

from __future__ import annotations

import pytest

from cortex.gateway.recent import BUCKET, SPAN, RecentTraffic


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0  # a multiple of BUCKET: buckets start where the test does

    def __call__(self) -> float:
        return self.now


def test_requests_tokens_errors_and_ttft_percentiles_over_the_window() -> None:
    clock = Clock()
    recent = RecentTraffic(clock)
    for i in range(20):  # 20 requests over 60 s: TTFT 10…200 ms, 5 tokens each, 2 errors
        clock.now = 1_000_000.0 + 3 * i
        recent.record("m1", 500 if i in (3, 7) else 200, 0.01 * (i + 1), 5)
    clock.now = 1_000_060.0
    m1 = recent.view()["models"]["m1"]
    assert m1["requests"] == 20
    assert m1["errors"] == 2
    assert m1["requests_per_min"] == pytest.approx(20.0)
    assert m1["tokens_per_s"] == pytest.approx(100 / 60)
    assert m1["ttft_p50"] == pytest.approx(0.10)  # nearest rank: the 10th of 20
    assert m1["ttft_p95"] == pytest.approx(0.19)
    series = m1["series"]
    assert len(series) == SPAN
    assert [b["t"] for b in series] == [1_000_060 - BUCKET * (SPAN - 1 - i) for i in range(SPAN)]
    assert sum(b["requests"] for b in series) == 20
    assert series[-1]["requests"] == 0  # nothing yet in the bucket that just started
    assert series[-7]["requests"] == 4  # the first bucket: t = 0, 3, 6, 9
    assert series[-7]["ttft_p50"] == pytest.approx(0.02)


def test_non_streamed_requests_have_no_ttft_and_models_apart() -> None:
    clock = Clock()
    recent = RecentTraffic(clock)
    recent.record("m1", 200, None, 7)
    recent.record("m2", 200, 0.5, 0)
    clock.now += 30
    models = recent.view()["models"]
    assert models["m1"]["ttft_p50"] is None
    assert models["m1"]["tokens_per_s"] == pytest.approx(7 / 30)
    assert models["m2"]["ttft_p95"] == pytest.approx(0.5)


def test_what_falls_out_of_the_window_is_forgotten() -> None:
    clock = Clock()
    recent = RecentTraffic(clock)
    recent.record("old", 200, 0.1, 1)
    clock.now += BUCKET * SPAN - 1  # its bucket is still the oldest one kept
    assert recent.view()["models"]["old"]["requests"] == 1
    clock.now += 1
    recent.record("new", 200, 0.1, 1)
    view = recent.view()
    assert "old" not in view["models"]
    assert view["models"]["new"]["requests"] == 1
    assert view["window_s"] == BUCKET * SPAN
