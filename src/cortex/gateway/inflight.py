"""``InFlight``: the gateway's own requests in flight per (node, model), and their last use.

The fleet's owner creates it and hands it to the proxy, which counts each request with
one ``acquire`` and one ``release``; the owner also ``acquire``s for the leases it hands
out with ``Fleet.ensure``. Nothing else writes, and nobody writes the counts directly:
``busy`` and ``last_used`` are read-only views.

Contracts:

* Both calls are synchronous and O(1) (a dict update, no task, no queue): this is the
  hot path, one pair per request.
* Only the owner reads the counts for decisions (where to load, what to evict); it never
  awaits while deciding, and the calls never await, so one decision sees one consistent
  set of counts. ``router.pick_ready`` reads ``busy`` too, but only to choose among ready
  nodes, and the proxy ``acquire``s with no await after that pick, so nothing can evict
  the model between the pick and the count.
"""

from __future__ import annotations

import math
from types import MappingProxyType

from cortex.gateway import clock
from cortex.gateway.state import DECAY, Busy, LastUsed, Uses


class InFlight:
    __slots__ = ("_busy", "_count_uses", "_last_used", "_uses", "busy", "last_used", "uses")

    def __init__(self, count_uses: bool = False) -> None:
        """``count_uses``: keep the decayed request counts (only ``gdsf`` reads them; the
        hot path skips them otherwise)."""
        self._count_uses = count_uses
        self._busy: dict[tuple[str, str], int] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._uses: dict[tuple[str, str], tuple[float, float]] = {}
        self.busy: Busy = MappingProxyType(self._busy)  # live, read-only
        self.last_used: LastUsed = MappingProxyType(self._last_used)  # clock.wall() stamps
        self.uses: Uses = MappingProxyType(self._uses)  # (decayed count, when), for gdsf

    def acquire(self, node: str, model: str) -> None:
        """Count one request on ``node`` for ``model`` (release it when it ends), and one
        more use in its decayed request count (``state.frequency``) if those are kept."""
        key = (node, model)
        self._busy[key] = self._busy.get(key, 0) + 1
        if not self._count_uses:
            return
        now = clock.wall()
        count, at = self._uses.get(key, (0.0, now))
        self._uses[key] = (count * math.exp((at - now) * DECAY) + 1.0, now)

    def release(self, node: str, model: str) -> None:
        """One request counted by ``acquire`` ended: uncount it and stamp the use."""
        key = (node, model)
        self._last_used[key] = clock.wall()
        left = self._busy.get(key, 1) - 1
        if left:
            self._busy[key] = left
        else:
            self._busy.pop(key, None)
