"""Relaying OpenAI-dialect requests to neurons: route, wait for cold loads, forward bytes.

The hot path reads only ``model`` and ``stream`` from the body and relays bytes; the
body is re-serialised only when it must change (an alias, or asking the neuron for
the usage chunk a streaming client did not ask for, which is then removed).

Contracts:

* A request that fails before any byte reached the client (the neuron is unreachable
  or answers 502/503) is retried once on another node.
* A client that disconnects cancels the handler (``gateway.http`` does that); the
  upstream connection is then closed, not pooled, which stops the neuron's generation.
* While a streaming client waits for a cold model, it gets SSE comment lines every
  few seconds so that its connection stays alive; errors after that are sent as an
  ``error`` event in the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import orjson

from cortex.config import GatewaySection
from cortex.errors import (
    CortexError,
    InvalidRequest,
    ModelNotFound,
    NeuronUnavailable,
    UpstreamTimeout,
)
from cortex.gateway.fleet import Fleet
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import GatewayMetrics, RequestRecorder
from cortex.gateway.router import pick_ready
from cortex.gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from cortex.protocol.openai import error_body

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE_EVERY = 5.0
RETRY_STATUSES = (502, 503)
_DONE = b"data: [DONE]"
_decoder = json.JSONDecoder()


@dataclass(slots=True)
class _Request:
    path: str
    dialect: str
    model: str
    body: bytes
    stream: bool
    wants_usage: bool


@dataclass(slots=True)
class _Outcome:
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Proxy:
    def __init__(
        self, fleet: Fleet, pool: UpstreamPool, metrics: GatewayMetrics, config: GatewaySection
    ) -> None:
        self.fleet = fleet
        self.pool = pool
        self.metrics = metrics
        self.config = config

    async def handle(self, request: HttpRequest, responder: Responder, dialect: str) -> None:
        try:
            routed = self._parse(request.path, dialect, request.body)
        except CortexError as err:
            send_error(responder, err)
            return
        recorder = RequestRecorder(self.metrics, routed.model, dialect)
        outcome = _Outcome(499)  # what a cancelled request counts as (the client left)
        try:
            outcome = await self._serve(responder, routed, recorder)
        finally:
            recorder.finish(outcome.status, outcome.prompt_tokens, outcome.completion_tokens)

    def _parse(self, path: str, dialect: str, body: bytes) -> _Request:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("Request body must be a JSON object")
        name = data.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("model: Field required (a model name)", param="model")
        model = self.fleet.snapshot.resolve(name)
        stream = data.get("stream") is True
        options = data.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        rewrite = model != name
        if rewrite:
            data["model"] = model
        if stream and dialect == "chat" and not wants_usage:
            data["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            rewrite = True
        return _Request(
            path, dialect, model, orjson.dumps(data) if rewrite else body, stream, wants_usage
        )

    async def _serve(
        self, responder: Responder, request: _Request, recorder: RequestRecorder
    ) -> _Outcome:
        started = False
        try:
            node = pick_ready(self.fleet.snapshot, request.model, self.fleet.busy)
            if node is not None:
                self.fleet.acquire(node, request.model)  # no await since the pick: no race
            else:
                if not self.fleet.snapshot.is_known(request.model):
                    raise ModelNotFound(
                        f"The model {request.model!r} does not exist", param="model"
                    )
                if request.stream:
                    responder.start(200, SSE_HEADERS)
                    started = True
                node = await self._wait_for_model(responder, request, recorder, started)
            recorder.dispatched(node)
            return await self._forward(responder, request, recorder, node, started)
        except CortexError as err:
            if not started:
                send_error(responder, err)
            else:
                responder.end(sse_event(error_body(err)) + _DONE + b"\n\n")
            return _Outcome(err.status)

    async def _wait_for_model(
        self, responder: Responder, request: _Request, recorder: RequestRecorder, streaming: bool
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
                    await responder.write(f": loading {request.model}\n\n".encode())
        finally:
            if not ensure.done():
                ensure.cancel()

    async def _forward(
        self,
        responder: Responder,
        request: _Request,
        recorder: RequestRecorder,
        node: str,
        started: bool,
    ) -> _Outcome:
        """Send to ``node`` (already counted in flight there); once more elsewhere if it fails."""
        headers = [(b"content-type", b"application/json")]
        held: str | None = node  # the node this request is counted on
        try:
            for attempt in (0, 1):
                endpoint = self.fleet.snapshot.nodes[node].endpoint
                try:
                    response = await self.pool.request(
                        endpoint, "POST", request.path, headers, request.body,
                        timeout=self.config.request_timeout,
                    )  # fmt: skip
                except UpstreamConnectError as exc:
                    self.fleet.node_failed(node, exc.message)
                    if attempt:
                        raise
                else:
                    if response.status not in RETRY_STATUSES or attempt:
                        async with response:
                            return await self._relay(
                                responder, request, recorder, response, node, started
                            )
                    await response.aclose()
                    self.fleet.poke(node)
                self.fleet.release(node, request.model)
                held = None
                node = held = await self._another_node(responder, request, recorder, node, started)
        finally:
            if held is not None:
                self.fleet.release(held, request.model)
        raise NeuronUnavailable(f"No node could serve {request.model!r}")

    async def _another_node(
        self,
        responder: Responder,
        request: _Request,
        recorder: RequestRecorder,
        failed: str,
        started: bool,
    ) -> str:
        """Another node for a request that failed on ``failed``, counted in flight there."""
        other = pick_ready(self.fleet.snapshot, request.model, self.fleet.busy, exclude=failed)
        if other is not None:
            self.fleet.acquire(other, request.model)
        else:
            other = await self._wait_for_model(responder, request, recorder, started)
        recorder.node = other
        return other

    async def _relay(
        self,
        responder: Responder,
        request: _Request,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        node: str,
        started: bool,
    ) -> _Outcome:
        is_sse = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        if not (request.stream and is_sse and response.status == 200):
            data = await response.read()
            if started:  # a stream was promised: turn the neuron's error into an error event
                responder.end(b"data: " + data + b"\n\n" + _DONE + b"\n\n")
            else:
                content_type = response.header(b"content-type") or b"application/json"
                responder.respond(
                    response.status, data, content_type, [(b"x-cortex-node", node.encode())]
                )
            return _Outcome(response.status, *_usage(data))
        if not started:
            responder.start(200, [*SSE_HEADERS, (b"x-cortex-node", node.encode())])
        return await self._relay_stream(responder, request, recorder, response)

    async def _relay_stream(
        self,
        responder: Responder,
        request: _Request,
        recorder: RequestRecorder,
        response: UpstreamResponse,
    ) -> _Outcome:
        outcome = _Outcome(200)
        is_token = _is_chat_token if request.dialect == "chat" else _is_responses_token
        pending = b""
        try:
            async for chunk in response:
                pending += chunk
                if b"\n\n" not in pending:
                    continue
                complete, _, pending = pending.rpartition(b"\n\n")
                out = []
                for event in complete.split(b"\n\n"):
                    if b'"usage"' in event:  # rare: one event per stream carries usage
                        usage, usage_only = _stream_usage(event)
                        if usage is not None:
                            outcome.prompt_tokens, outcome.completion_tokens = usage
                        if usage_only and not request.wants_usage:
                            continue
                    elif is_token(event):
                        recorder.chunk()
                    out.append(event)
                if out:
                    await responder.write(b"\n\n".join(out) + b"\n\n")
        except UpstreamError as exc:
            outcome.status = 502
            error = error_body(NeuronUnavailable(f"The neuron failed mid-stream: {exc.message}"))
            pending += b"\n\n" + sse_event(error)
        responder.end(pending)
        return outcome


def send_error(responder: Responder, err: CortexError) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    responder.respond(err.status, orjson.dumps(error_body(err)), headers=headers)


def sse_event(payload: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _is_chat_token(event: bytes) -> bool:
    return event.startswith(b"data: {") and b'"role"' not in event and b'"delta":{}' not in event


def _is_responses_token(event: bytes) -> bool:
    return b'.delta"' in event


def _stream_usage(event: bytes) -> tuple[tuple[int, int] | None, bool]:
    """(tokens, is the chat usage-only chunk) of an SSE event that mentions usage."""
    data = event[event.find(b"{") :]
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(payload, dict):
        return None, False
    usage = payload.get("usage")
    if not isinstance(usage, dict):  # Responses API: inside response.completed's response
        response = payload.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None, False
    return _tokens(usage), payload.get("choices") == []


def _tokens(usage: dict[str, object]) -> tuple[int, int]:
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _usage(data: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens from the last ``"usage"`` object in ``data``, else zeros."""
    at = data.rfind(b'"usage":{')
    if at < 0:
        return 0, 0
    try:
        usage, _ = _decoder.raw_decode(data[at + 8 :].decode("utf-8", "replace"))
    except ValueError:
        return 0, 0
    return _tokens(usage) if isinstance(usage, dict) else (0, 0)
