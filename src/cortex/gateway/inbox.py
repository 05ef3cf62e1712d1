"""Messages to the fleet's owner task, and how a node reading updates a node.

Everything the owner learns or is asked arrives as one of these; I/O tasks and API
calls only ever send them (see ``fleet`` and ``docs/fleet.md``). Futures in a message
are how the owner answers: it resolves them once the message has been applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cortex.errors import CortexError
from cortex.gateway import clock
from cortex.gateway.state import NodeState, PendingLoad
from cortex.protocol.fleet import FleetProgress
from cortex.protocol.lifecycle import AvailableModel, NodeStatus

Listener = Callable[[FleetProgress], None]


@dataclass(slots=True)
class Waiter:
    future: asyncio.Future[str]
    node: str | None
    listener: Listener | None = None
    lease: bool = False  # count a request in flight on the node before answering

    def resolve(self, acquire: Callable[[str, str], None], node: str, model: str) -> None:
        if self.future.done():
            return
        if self.lease:
            acquire(node, model)
        self.future.set_result(node)


@dataclass(slots=True)
class Ensure:
    model: str
    waiter: Waiter


@dataclass(slots=True)
class Reading:
    """What a node said (or that it did not answer), and when the question was asked."""

    status: NodeStatus | None
    taken_at: float  # clock.monotonic() before the request went out
    error: str | None = None
    available: list[AvailableModel] | None = None


@dataclass(slots=True)
class Polled:
    node: str
    reading: Reading


@dataclass(slots=True)
class LoadDone:
    load: PendingLoad
    reading: Reading
    error: CortexError | None
    duration: float


@dataclass(slots=True)
class Progress:
    """A step of a load in flight, for the waiters that listen (``/fleet/load`` streams)."""

    event: FleetProgress


@dataclass(slots=True)
class Unload:
    model: str
    node: str | None
    force: bool
    future: asyncio.Future[list[str]]


@dataclass(slots=True)
class UnloadDone:
    model: str
    readings: dict[str, Reading]


@dataclass(slots=True)
class Pin:
    model: str
    pinned: bool


@dataclass(slots=True)
class Barrier:
    """Answered when reached: everything sent before it has been applied."""

    future: asyncio.Future[None]


Message = Ensure | Polled | LoadDone | Progress | Unload | UnloadDone | Pin | Barrier


@dataclass(slots=True)
class LoadState:
    waiters: list[Waiter] = field(default_factory=list)
    size_retries: int = 0


def apply_reading(node: NodeState, reading: Reading) -> NodeState:
    """``node`` updated by ``reading``, unless something newer is already known."""
    if reading.taken_at < node.status_at:
        return node
    if reading.status is None:
        return replace(
            node,
            up=False,
            error=reading.error,
            failures=node.failures + 1,
            status_at=reading.taken_at,
        )
    node = replace(
        node,
        up=True,
        status=reading.status,
        # When the reading was taken, in wall-clock time: what the neuron said counts
        # every request the gateway released before this moment, none released after.
        last_seen=clock.wall() - (clock.monotonic() - reading.taken_at),
        error=None,
        failures=0,
        status_at=reading.taken_at,
    )
    if reading.available is not None:
        node = replace(node, available=tuple(reading.available))
    return node
