"""The OpenAI dialects at the gateway: chat completions and the Responses API, relayed.

Reads only ``model``, ``stream`` and ``stream_options`` from the body; relays the
neuron's bytes, SSE event by event. The body is re-serialised only for an alias, or
to ask the neuron for the usage chunk (removed again when the client did not ask).
"""

from __future__ import annotations

import json

import orjson

from cortex.errors import CortexError, InvalidRequest, NeuronUnavailable
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import RequestRecorder
from cortex.gateway.proxy import SSE_HEADERS, Outcome, Routed
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamError, UpstreamResponse
from cortex.protocol.openai import error_body

_DONE = b"data: [DONE]"
_decoder = json.JSONDecoder()


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
        send_error(responder, err)

    def stream_error(self, err: CortexError) -> bytes:
        return sse_event(error_body(err)) + _DONE + b"\n\n"

    def keepalive(self, routed: Routed) -> bytes:
        return f": loading {routed.model}\n\n".encode()

    async def relay(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        node: str,
        started: bool,
    ) -> Outcome:
        if not (request.stream and response.is_event_stream and response.status == 200):
            data = await response.read()
            if started:  # a stream was promised: turn the neuron's error into an error event
                responder.end(b"data: " + data + b"\n\n" + _DONE + b"\n\n")
            else:
                content_type = response.header(b"content-type") or b"application/json"
                responder.respond(
                    response.status, data, content_type, _passed_headers(response, node)
                )
            return Outcome(response.status, *_usage(data))
        if not started:
            responder.start(200, [*SSE_HEADERS, (b"x-cortex-node", node.encode())])
        return await self._relay_stream(responder, request, recorder, response)

    async def _relay_stream(
        self,
        responder: Responder,
        request: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
    ) -> Outcome:
        outcome = Outcome(200)
        is_token = _is_chat_token if self.name == "chat" else _is_responses_token
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


def _passed_headers(response: UpstreamResponse, node: str) -> list[tuple[bytes, bytes]]:
    """What the client gets of the neuron's headers: the node, and when to retry a 429."""
    headers = [(b"x-cortex-node", node.encode())]
    retry = response.header(b"retry-after")
    if retry is not None:
        headers.append((b"retry-after", retry))
    return headers
