"""Placement against per-host LRU, and the simulator's own speed, on the issue's traces.

For each trace (100 nodes of 24/48/80/192 GB; a day, a million requests): the best cortex
policy's cold loads per 1000 requests and cold-start wait p95 against ``per-host-lru``'s from
the same run (the ratio: below 1 is better), and how long the simulation of the cortex policy
took against the 60 s goal.

    .venv/bin/python bench/placement.py [--requests 1000000] [--policy cortex-gdsf]
"""

from __future__ import annotations

import argparse

from cortex.sim.policies import BASELINE, POLICIES
from cortex.sim.run import fleet_of, run
from cortex.sim.trace import generate

TRACES = {
    "zipf a=1.0, 50 models": {"kind": "zipf", "models": 50, "arrivals_kind": "steady"},
    "sessions, diurnal, 50 models": {
        "kind": "sessions",
        "models": 50,
        "arrivals_kind": "diurnal",
    },
    "zipf a=1.0, 500 models": {"kind": "zipf", "models": 500, "arrivals_kind": "steady"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--policy", default="cortex-gdsf", choices=list(POLICIES))
    args = parser.parse_args()
    specs = fleet_of("mixed", 100)
    for title, spec in TRACES.items():
        kind = str(spec["kind"])
        trace = generate(
            kind,
            requests=args.requests,
            models=int(spec["models"]),
            arrivals_kind=str(spec["arrivals_kind"]),
        )
        ours = run(trace, specs, POLICIES[args.policy]).summary()
        base = run(trace, specs, POLICIES[BASELINE]).summary()
        for figure, unit in (("cold_loads_per_1000", ""), ("cold_start_p95_s", " s")):
            mine, theirs = ours[figure], base[figure]
            ratio = mine / theirs if theirs else float("nan")
            print(
                f"{title}: {figure} {mine}{unit} ({args.policy}) vs {theirs}{unit} "
                f"({BASELINE}), ratio {ratio:.2f}"
            )
        wall = ours["wall_seconds"]
        print(
            f"{title}: simulation of {args.requests:,} requests {wall} s (goal 60 s), "
            f"ratio {wall / 60:.2f}"
        )


if __name__ == "__main__":
    main()
