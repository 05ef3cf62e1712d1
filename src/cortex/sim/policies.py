"""The policies ``cortex sim`` compares, by name: two baselines and cortex's own strategies.

The baselines use the same fleet owner with placement taken out of its hands:
``per-host-lru`` gives each model one fixed host (a seeded draw among the nodes it fits,
collisions included: nobody planned the spread), as a llama-swap or Ollama per machine
behind a static route; ``per-host-ttl`` is that with Ollama's default keep_alive (a model
idle 5 minutes is unloaded); ``random-lru`` loads on a random node each time. All evict by
LRU on that node. The ``cortex-…`` policies are what cortex.toml can select.
"""

from __future__ import annotations

from cortex.sim.run import Policy

POLICIES: dict[str, Policy] = {
    policy.name: policy
    for policy in (
        Policy("per-host-lru", home=True, about="one fixed host per model, LRU there"),
        Policy(
            "per-host-ttl",
            home=True,
            keep_alive=300.0,
            about="as per-host-lru, and a model idle 5 min is unloaded (Ollama's keep_alive)",
        ),
        Policy("random-lru", random=True, about="a random node per load, LRU there"),
        Policy("cortex-lru", about="before this work: first-fit placement, LRU, one copy"),
        Policy(
            "cortex-best-lru",
            placement="best-fit",
            replica_after=30.0,
            about="best-fit placement, LRU, replicas past 30 s of queue",
        ),
        Policy(
            "cortex-gdsf",
            placement="best-fit",
            strategy="gdsf",
            replica_after=30.0,
            about="best-fit placement, GDSF, replicas past 30 s of queue",
        ),
        Policy(
            "cortex-gdsf-sleep",
            placement="best-fit",
            strategy="gdsf",
            replica_after=30.0,
            sleep=True,
            about="as cortex-gdsf, evicted models asleep in host memory (vLLM on CUDA)",
        ),
    )
}
