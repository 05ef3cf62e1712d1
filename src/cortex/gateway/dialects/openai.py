"""The OpenAI dialects at the gateway: chat completions and the Responses API, relayed.

Reads only ``model``, ``stream`` and ``stream_options`` from the body. The neuron's
answer is relayed as it came: a whole reply byte for byte, a stream event by event
through the SSE codec, each event parsed once into its typed model (``gateway.dialects.relay``)
for usage and time-to-first-token and written on with its data unchanged. The body is
re-serialised only for an alias, or to ask the neuron for the usage chunk (removed again
when the client did not ask).
"""

from __future__ import annotations

import orjson

from cortex import sse
from cortex.errors import CortexError, InvalidRequest, NeuronUnavailable
from cortex.gateway.dialects.relay import count_reply, count_usage, parse_event, upstream_events
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import RequestRecorder
from cortex.gateway.proxy import Outcome, Routed, send_error
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamError, UpstreamResponse
from cortex.protocol.openai import error_body
from cortex.protocol.openai_reply import ChatCompletionChunk
from cortex.protocol.responses import StreamEvent


class OpenAIDialect:
    def __init__(self, name: str) -> None:
        self.name = name  # "chat" or "responses"

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
        options = data.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        rewrite = model != name
        if rewrite:
            data["model"] = model
        if stream and self.name == "chat" and not wants_usage:
            data["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            rewrite = True
        return Routed(
            path=request.path,
            model=model,
            body=orjson.dumps(data) if rewrite else body,
            stream=stream,
            wants_usage=wants_usage,
            client_model=name,
        )

    def send_error(self, responder: Responder, err: CortexError) -> None:
        send_error(responder, err, error_body(err))

    def stream_error(self, err: CortexError) -> bytes:
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
        if not (request.stream and response.is_event_stream and response.status == 200):
            data = await response.read()
            if response.status == 200:
                count_reply(outcome, data)
            if started:  # a stream was promised: turn the neuron's error into an error event
                responder.end(sse.frame(data) + sse.DONE)
            else:
                content_type = response.header(b"content-type") or b"application/json"
                responder.respond(
                    response.status, data, content_type, _passed_headers(response, node)
                )
            return outcome
        if not started:
            responder.start(200, [*sse.RAW_HEADERS, (b"x-cortex-node", node.encode())])
        relay = self._chat_event if self.name == "chat" else self._responses_event
        try:
            async for events in upstream_events(response):
                out = b"".join(relay(event, request, recorder, outcome) for event in events)
                if out:
                    await responder.write(out)
        except UpstreamError as exc:
            err: CortexError = NeuronUnavailable(f"The neuron failed mid-stream: {exc.message}")
            outcome.status = 502
            responder.end(sse.encode(error_body(err)))
            return outcome
        except CortexError as err:  # an event that does not parse, or one past the size cap
            outcome.status = err.status
            responder.end(self.stream_error(err))
            return outcome
        responder.end()
        return outcome

    @staticmethod
    def _chat_event(
        event: sse.Event, request: Routed, recorder: RequestRecorder, outcome: Outcome
    ) -> bytes:
        if event.is_done():
            return sse.DONE
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
        event: sse.Event, request: Routed, recorder: RequestRecorder, outcome: Outcome
    ) -> bytes:
        parsed = parse_event(StreamEvent, event)
        if parsed.response is not None:
            count_usage(outcome, parsed.response.usage)
        if parsed.has_output:
            recorder.chunk()
        return sse.frame(event.data, None if event.name == "message" else event.name)


def _passed_headers(response: UpstreamResponse, node: str) -> list[tuple[bytes, bytes]]:
    """What the client gets of the neuron's headers: the node, and when to retry a 429."""
    headers = [(b"x-cortex-node", node.encode())]
    retry = response.header(b"retry-after")
    if retry is not None:
        headers.append((b"retry-after", retry))
    return headers
