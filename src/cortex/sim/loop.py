"""An asyncio event loop on virtual time, for the fleet simulator.

The loop's clock is a number that jumps to the next timer whenever nothing is ready, so a
day of ``asyncio.sleep`` and ``wait_for`` takes as long as the callbacks take to run. There
is no I/O: the selector only moves the clock. While it runs, the fleet's clock
(``cortex.gateway.clock``) reads the same virtual time, so the gateway's own code (the owner,
its polls and timeouts, the in-flight stamps) runs unchanged on it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from cortex.gateway import clock

T = TypeVar("T")
EPOCH = 1_767_225_600.0  # what the wall clock reads at virtual time 0 (2026-01-01)


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set, yet the simulation has not finished."""


class _Selector(selectors.BaseSelector):
    """No file descriptors: "waiting" for ``timeout`` moves the loop's clock by that much."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, id(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("the simulation is waiting for something that will never happen")
        self._loop.now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh virtual loop, the fleet's clock reading it."""
    loop = VirtualLoop()
    clock.use(loop.wall, loop.time)
    try:
        return loop.run_until_complete(main)
    finally:
        clock.reset()
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
