"""The fleet's clock: what the owner, the poller, the load tasks and the in-flight counts read
when they stamp or time something.

The gateway reads real time. The fleet simulator (``cortex.sim``) runs the same owner, router
and evictor on a virtual clock: it calls ``use`` with its own functions (and runs them on an
event loop whose timers follow that clock), so nothing in the fleet's code knows it is
simulated. Call sites read ``clock.wall()`` / ``clock.monotonic()`` through the module, so
a swap reaches them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

wall: Callable[[], float] = time.time  # seconds since the epoch (stamps the neurons compare)
monotonic: Callable[[], float] = time.monotonic  # durations and the order of readings


def use(wall_clock: Callable[[], float], monotonic_clock: Callable[[], float]) -> None:
    """Read time from these functions from now on (``reset`` goes back to real time)."""
    global wall, monotonic
    wall, monotonic = wall_clock, monotonic_clock


def reset() -> None:
    use(time.time, time.monotonic)
