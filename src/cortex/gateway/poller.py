"""Asking neurons how they are: one polling loop per node, with back-off when down.

Readings go to the fleet's owner as ``Polled`` messages; nothing here changes state.
``poke(node)`` makes a node's next poll happen now (after a failed request, say).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cortex.errors import CortexError
from cortex.gateway import clock
from cortex.gateway.inbox import Message, Polled, Reading
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.state import NodeState, Snapshot

MAX_BACKOFF = 30.0
AVAILABLE_EVERY = 15  # polls between refreshes of what a node has on disk


async def read(client: NeuronClient, node: NodeState, *, with_available: bool = False) -> Reading:
    """One reading of ``node``: its status (and what it has on disk), or why not."""
    taken_at = clock.monotonic()
    try:
        status = await client.node(node)
        available = await client.available(node) if with_available else None
    except CortexError as exc:
        return Reading(None, taken_at, exc.message)
    return Reading(status, taken_at, None, available)


class Poller:
    def __init__(
        self,
        client: NeuronClient,
        snapshot: Callable[[], Snapshot],
        send: Callable[[Message], None],
        interval: float,
    ) -> None:
        self._client = client
        self._snapshot = snapshot
        self._send = send
        self._interval = interval
        self._pokes: dict[str, asyncio.Event] = {}

    def poke(self, node: str) -> None:
        if node in self._pokes:
            self._pokes[node].set()

    async def poll(self, name: str, *, with_available: bool) -> None:
        reading = await read(
            self._client, self._snapshot().nodes[name], with_available=with_available
        )
        self._send(Polled(name, reading))

    async def run(self, name: str) -> None:
        """Poll ``name`` forever: every interval while up, backing off while down."""
        poke = self._pokes.setdefault(name, asyncio.Event())
        count = 0
        while True:
            node = self._snapshot().nodes[name]
            backoff = min(self._interval * 2 ** min(node.failures, 10), MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), self._interval if node.up else backoff)
            poke.clear()
            count += 1
            was_down = not self._snapshot().nodes[name].up
            await self.poll(name, with_available=was_down or count % AVAILABLE_EVERY == 0)
