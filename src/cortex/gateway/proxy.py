"""Relaying requests to neurons: route, wait for cold loads, forward, relay.

``Proxy`` owns what every dialect shares (routing, waiting on loads, the one retry,
disconnects); a ``Dialect`` owns what differs: how a request is read, the error
envelope, keep-alives, and how the neuron's answer reaches the client. The OpenAI
dialects (``chat``, ``responses``) read only ``model`` and ``stream`` from the body and
relay bytes; the body is re-serialised only when it must change (an alias, or asking
the neuron for the usage chunk a streaming client did not ask for, which is then
removed). The Anthropic dialect translates (``gateway.dialects.anthropic``).

Contracts:

* With API keys (``gateway.auth``), the request's key is checked once the model is known:
  a model outside its patterns is a 404 like an unknown one, then its limits (429). The
  slot it takes is released when the request ends, however it ends.
* A request that fails before any byte reached the client (the neuron is unreachable
  or answers 502/503) is retried once on another node.
* A client that disconnects cancels the handler (``gateway.http`` does that); the
  upstream connection is then closed, not pooled, which stops the neuron's generation.
* While a streaming client waits for a cold model, it gets the dialect's keep-alive
  every few seconds so that its connection stays open; errors after that are sent in
  the stream, in the dialect's form.
* ``request_timeout`` is an idle deadline on the neuron (for its answer's head, then for
  each read of its body), not a cap on a long generation. Past it, a request whose head
  is not sent yet gets 504 in the dialect's envelope; a stream under way ends with the
  dialect's terminal error event (``Dialect.stream_error`` and the relays): it is never
  just cut.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cortex import sse
from cortex.config import GatewaySection
from cortex.errors import (
    CortexError,
    InvalidRequest,
    ModelNotFound,
    NeuronUnavailable,
    UpstreamTimeout,
)
from cortex.gateway.auth import Key
from cortex.gateway.fleet import Fleet
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import GatewayMetrics, RequestRecorder
from cortex.gateway.neurons import relay_headers
from cortex.gateway.router import pick_ready
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamConnectError, UpstreamPool, UpstreamResponse

KEEPALIVE_EVERY = 5.0
RETRY_STATUSES = (502, 503)


@dataclass(slots=True)
class Routed:
    """A client's request as the neuron will get it."""

    path: str  # the neuron's path
    model: str  # the model id (aliases applied)
    body: bytes  # the neuron's body
    stream: bool
    wants_usage: bool = False  # the client asked for the usage chunk
    client_model: str = ""  # the name the client used (some dialects echo it)
    options: dict[str, Any] = field(default_factory=dict)  # dialect's own


@dataclass(slots=True)
class Outcome:
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Dialect(Protocol):
    name: str  # the ``dialect`` metrics label

    def parse(self, request: HttpRequest, snapshot: Snapshot) -> Routed: ...

    def send_error(self, responder: Responder, err: CortexError) -> None: ...

    def stream_error(self, err: CortexError) -> bytes:
        """The last bytes of a stream that failed after it started."""
        ...

    def keepalive(self, routed: Routed) -> bytes: ...

    async def relay(
        self,
        responder: Responder,
        routed: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        node: str,
        started: bool,
    ) -> Outcome:
        """Answer the client from the neuron's response (the head may be sent already)."""
        ...


class Proxy:
    def __init__(
        self, fleet: Fleet, pool: UpstreamPool, metrics: GatewayMetrics, config: GatewaySection
    ) -> None:
        self.fleet = fleet
        self.pool = pool
        self.metrics = metrics
        self.config = config

    async def handle(
        self, request: HttpRequest, responder: Responder, dialect: Dialect, key: Key | None = None
    ) -> None:
        try:
            routed = dialect.parse(request, self.fleet.snapshot)
        except CortexError as err:
            dialect.send_error(responder, err)
            return
        recorder = RequestRecorder(
            self.metrics, routed.model, dialect.name, key.name if key is not None else None
        )
        outcome = Outcome(499)  # what a cancelled request counts as (the client left)
        try:
            if key is None:
                outcome = await self._serve(responder, routed, recorder, dialect)
                return
            try:
                key.admit(routed.client_model, routed.model)
            except CortexError as err:
                dialect.send_error(responder, err)
                outcome = Outcome(err.status)
                return
            try:
                outcome = await self._serve(responder, routed, recorder, dialect)
            finally:
                key.release()
        finally:
            recorder.finish(outcome.status, outcome.prompt_tokens, outcome.completion_tokens)

    async def _serve(
        self, responder: Responder, request: Routed, recorder: RequestRecorder, dialect: Dialect
    ) -> Outcome:
        started = False
        try:
            node = pick_ready(self.fleet.snapshot, request.model, self.fleet.in_flight.busy)
            if node is not None:
                self.fleet.in_flight.acquire(node, request.model)  # no await since pick: no race
            else:
                if not self.fleet.snapshot.is_known(request.model):
                    raise ModelNotFound(
                        f"The model {request.model!r} does not exist", param="model"
                    )
                if request.stream:
                    responder.start(200, sse.RAW_HEADERS)
                    started = True
                node = await self._wait_for_model(responder, request, recorder, dialect, started)
            recorder.dispatched(node)
            return await self._forward(responder, request, recorder, dialect, node, started)
        except CortexError as err:
            if not started:
                dialect.send_error(responder, err)
            else:
                responder.end(dialect.stream_error(err))
            return Outcome(err.status)

    async def _wait_for_model(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        dialect: Dialect,
        streaming: bool,
    ) -> str:
        """A node where the model is ready, with this request already counted there."""
        began = time.perf_counter()
        timeout = self.config.load_timeout
        ensure = asyncio.ensure_future(self.fleet.ensure(request.model))
        try:
            while True:
                left = timeout - (time.perf_counter() - began)
                if left <= 0:
                    raise UpstreamTimeout(
                        f"The model {request.model!r} was not ready within {timeout:g}s"
                    )
                done, _ = await asyncio.wait({ensure}, timeout=min(left, KEEPALIVE_EVERY))
                if done:
                    node = ensure.result()
                    recorder.cold_start(time.perf_counter() - began)
                    return node
                if streaming:
                    await responder.write(dialect.keepalive(request))
        finally:
            if not ensure.done():
                ensure.cancel()

    async def _forward(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        dialect: Dialect,
        node: str,
        started: bool,
    ) -> Outcome:
        """Send to ``node`` (already counted in flight there); once more elsewhere if it fails."""
        held: str | None = node  # the node this request is counted on
        try:
            for attempt in (0, 1):
                target = self.fleet.snapshot.nodes[node]
                try:
                    response = await self.pool.request(
                        target.endpoint, "POST", request.path, relay_headers(target.token),
                        request.body, timeout=self.config.request_timeout,
                    )  # fmt: skip
                except UpstreamConnectError as exc:
                    self.fleet.node_failed(node, exc.message)
                    if attempt:
                        raise
                else:
                    if response.status not in RETRY_STATUSES or attempt:
                        async with response:
                            return await dialect.relay(
                                responder, request, recorder, response, node, started
                            )
                    await response.aclose()
                    self.fleet.poke(node)
                self.fleet.in_flight.release(node, request.model)
                held = None
                node = held = await self._another_node(
                    responder, request, recorder, dialect, node, started
                )
        finally:
            if held is not None:
                self.fleet.in_flight.release(held, request.model)
        raise NeuronUnavailable(f"No node could serve {request.model!r}")

    async def _another_node(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        dialect: Dialect,
        failed: str,
        started: bool,
    ) -> str:
        """Another node for a request that failed on ``failed``, counted in flight there."""
        other = pick_ready(
            self.fleet.snapshot, request.model, self.fleet.in_flight.busy, exclude=failed
        )
        if other is not None:
            self.fleet.in_flight.acquire(other, request.model)
        else:
            other = await self._wait_for_model(responder, request, recorder, dialect, started)
        recorder.node = other
        return other


def dump_body(data: Any) -> bytes:
    """A client's request, rewritten, as the body for the neuron. What JSON parsers read
    but cannot write back (an integer past 64 bits) is the client's mistake: a 400."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            f"Request body cannot be relayed: {exc} (integers must fit in 64 bits)"
        ) from None


def send_error(
    responder: Responder,
    err: CortexError,
    envelope: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with ``err``'s status, its headers (``Retry-After`` …) and ``envelope``, the
    dialect's error body for it."""
    raw = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    responder.respond(err.status, orjson.dumps(envelope), headers=[*raw, *(headers or [])])
