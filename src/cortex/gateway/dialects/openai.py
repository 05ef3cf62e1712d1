"""The OpenAI dialects at the gateway: chat completions, the Responses API, text completions
and embeddings, relayed.

Reads only ``model``, ``stream`` and ``stream_options`` from the body. The neuron's
answer is relayed as it came: a whole reply byte for byte, a stream event by event
through the SSE codec, each event parsed once into its typed model (``gateway.dialects.relay``)
for usage and time-to-first-token and written on with its data unchanged. The body is
re-serialised only for an alias, or to ask the neuron for the usage chunk (removed again
when the client did not ask).

A request for a model known to serve the other kind (an embedding model asked to chat, a
chat model asked for embeddings) is a 400 before any load; embeddings are never streamed.

A stream that fails after it started (the neuron died, went silent past
``request_timeout``, or sent what does not parse) ends with the dialect's terminal error:
for chat and completions an error chunk (``data: {"error": …}``) then ``data: [DONE]``;
for Responses a
``response.failed`` event carrying the response the stream opened with (or a fresh one)
and the next ``sequence_number``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from cortex import sse
from cortex.errors import BadUpstream, CortexError, InvalidRequest, NeuronUnavailable
from cortex.gateway.catalogue import check_serves
from cortex.gateway.dialects.relay import count_reply, count_usage, parse_event, upstream_events
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import RequestRecorder
from cortex.gateway.proxy import Outcome, Routed, dump_body, send_error
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamError, UpstreamResponse
from cortex.protocol.openai import error_body, error_from_body
from cortex.protocol.openai_reply import ChatCompletionChunk, TextCompletionChunk
from cortex.protocol.responses import StreamEvent


class OpenAIDialect:
    def __init__(self, name: str) -> None:
        self.name = name  # "chat", "responses", "completions" or "embeddings"

    def parse(self, request: HttpRequest, snapshot: Snapshot) -> Routed:
        body = request.body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("Request body must be a JSON object")
        name = data.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("model: Field required (a model name)", param="model")
        model = snapshot.resolve(name)
        stream = data.get("stream") is True
        if self.name == "embeddings":
            if stream:
                raise InvalidRequest("stream: embeddings are not streamed", param="stream")
            check_serves(snapshot, model, name, "embedding")
        else:
            check_serves(snapshot, model, name, "chat")
        options = data.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        rewrite = model != name
        if rewrite:
            data["model"] = model
        if stream and self.name in ("chat", "completions") and not wants_usage:
            data["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            rewrite = True
        return Routed(
            path=request.path,
            model=model,
            body=dump_body(data) if rewrite else body,
            stream=stream,
            wants_usage=wants_usage,
            client_model=name,
        )

    def send_error(self, responder: Responder, err: CortexError) -> None:
        send_error(responder, err, error_body(err))

    def stream_error(self, err: CortexError) -> bytes:
        return self._failed(err, _Trail())

    def _failed(self, err: CortexError, trail: _Trail, model: str = "") -> bytes:
        """The dialect's terminal error event for a stream that already started."""
        if self.name == "responses":
            return response_failed(err, trail, model)
        return sse.encode(error_body(err)) + sse.DONE

    def keepalive(self, routed: Routed) -> bytes:
        return sse.comment(f"loading {routed.model}")

    async def relay(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        node: str,
        started: bool,
    ) -> Outcome:
        outcome = Outcome(response.status)
        trail = _Trail()
        if not (request.stream and response.is_event_stream and response.status == 200):
            data = await response.read()
            if response.status == 200:
                count_reply(outcome, data)
            if started:  # a stream was promised: turn the neuron's error into an error event
                failure = error_from_body(response.status, data)
                if response.status == 200:
                    failure = BadUpstream("The neuron answered a stream with a whole reply")
                responder.end(self._failed(failure, trail, request.client_model))
            else:
                content_type = response.header(b"content-type") or b"application/json"
                responder.respond(
                    response.status, data, content_type, _passed_headers(response, node)
                )
            return outcome
        if not started:
            responder.start(200, [*sse.RAW_HEADERS, (b"x-cortex-node", node.encode())])
        relay = self._responses_event if self.name == "responses" else self._chunk_event
        try:
            async for events in upstream_events(response):
                out = b"".join(relay(event, request, recorder, outcome, trail) for event in events)
                if out:
                    await responder.write(out)
        except UpstreamError as exc:
            err: CortexError = NeuronUnavailable(f"The neuron failed mid-stream: {exc.message}")
            outcome.status = 502
            responder.end(self._failed(err, trail, request.client_model))
            return outcome
        except CortexError as err:  # silent past request_timeout, or an event that does not parse
            outcome.status = err.status
            responder.end(self._failed(err, trail, request.client_model))
            return outcome
        responder.end()
        return outcome

    def _chunk_event(
        self,
        event: sse.Event,
        request: Routed,
        recorder: RequestRecorder,
        outcome: Outcome,
        _: _Trail,
    ) -> bytes:
        """A chat or text completion chunk: usage counted (the chunk the gateway asked for
        dropped again unless the client did too), output timed, the data relayed as is."""
        if event.is_done():
            return sse.DONE
        chunk: ChatCompletionChunk | TextCompletionChunk
        if self.name == "completions":
            chunk = parse_event(TextCompletionChunk, event)
        else:
            chunk = parse_event(ChatCompletionChunk, event)
        if chunk.usage is not None:
            count_usage(outcome, chunk.usage)
            if chunk.is_usage_only and not request.wants_usage:
                return b""  # asked for by the gateway, not by the client
        if chunk.has_output:
            recorder.chunk()
        return sse.frame(event.data)

    @staticmethod
    def _responses_event(
        event: sse.Event,
        request: Routed,
        recorder: RequestRecorder,
        outcome: Outcome,
        trail: _Trail,
    ) -> bytes:
        parsed = parse_event(StreamEvent, event)
        trail.events += 1
        if parsed.response is not None:
            if trail.response is None:  # the head the stream opened with (response.created)
                trail.response = orjson.loads(event.data).get("response")
            count_usage(outcome, parsed.response.usage)
        if parsed.has_output:
            recorder.chunk()
        return sse.frame(event.data, None if event.name == "message" else event.name)


@dataclass(slots=True)
class _Trail:
    """What a Responses stream has told its client so far: what its failure must follow."""

    events: int = 0  # events relayed: the next sequence_number
    response: dict[str, Any] | None = None  # the response object it opened with


def response_failed(err: CortexError, trail: _Trail, model: str = "") -> bytes:
    """A ``response.failed`` event: the stream's own response (a fresh one if none was
    sent yet), now failed with ``err``, numbered after the events already sent."""
    response: dict[str, Any] = {
        "id": f"resp_{secrets.token_hex(16)}",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "output": [],
        "incomplete_details": None,
        "usage": None,
        **(trail.response or {}),
        "status": "failed",
        "error": {"code": err.code or "server_error", "message": err.message},
    }
    event = {"type": "response.failed", "sequence_number": trail.events, "response": response}
    return sse.encode(event, "response.failed")


def _passed_headers(response: UpstreamResponse, node: str) -> list[tuple[bytes, bytes]]:
    """What the client gets of the neuron's headers: the node, and when to retry a 429."""
    headers = [(b"x-cortex-node", node.encode())]
    retry = response.header(b"retry-after")
    if retry is not None:
        headers.append((b"retry-after", retry))
    return headers
