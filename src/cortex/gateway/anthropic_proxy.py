"""The Anthropic dialect at the gateway: Messages in, OpenAI chat to the neuron, back.

Requests are validated and translated once (``gateway.anthropic``); the neuron's
answer is parsed chunk by chunk into typed OpenAI chunks and translated into
Anthropic's events (never by rewriting SSE text). Errors use Anthropic's envelope
with a ``request_id``; a stream waiting on a cold model gets ``ping`` events; a
neuron that dies mid-stream ends it with an ``error`` event.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from cortex.errors import (
    ContextLengthExceeded,
    CortexError,
    EngineFailure,
    InvalidRequest,
    ModelNotFound,
    NeuronUnavailable,
    NoCapacity,
    NotFound,
    Overloaded,
    RequestTooLarge,
    Unauthorized,
    UpstreamTimeout,
)
from cortex.gateway.anthropic import (
    StreamTranslator,
    from_openai,
    prompt_too_long,
    to_openai,
    to_tokenize,
)
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import RequestRecorder
from cortex.gateway.proxy import SSE_HEADERS, Outcome, Routed
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from cortex.protocol.anthropic import (
    error_body,
    parse_count_tokens_request,
    parse_messages_request,
)

_BY_STATUS: dict[int, type[CortexError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    413: RequestTooLarge,
    429: Overloaded,
    503: NeuronUnavailable,
    504: UpstreamTimeout,
    507: NoCapacity,
}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def request_id() -> str:
    return "req_" + secrets.token_hex(12)


def neuron_error(status: int, data: bytes) -> CortexError:
    """The neuron's OpenAI error envelope → the CortexError an Anthropic client should see."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = {}
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"The neuron answered HTTP {status}")
    if error.get("code") == "context_length_exceeded":
        prompt, context = error.get("prompt_tokens"), error.get("context_length")
        if isinstance(prompt, int) and isinstance(context, int):
            return ContextLengthExceeded(prompt_too_long(prompt, context))
        return ContextLengthExceeded(message)
    if error.get("code") == "model_not_found":
        return ModelNotFound(message)
    return _BY_STATUS.get(status, EngineFailure)(message)


class AnthropicDialect:
    name = "anthropic"

    def parse(self, request: HttpRequest, snapshot: Snapshot) -> Routed:
        parsed = parse_messages_request(request.body)
        model = snapshot.resolve(parsed.model)
        body = to_openai(parsed, model)
        body["reasoning_field"] = "reasoning_content"  # one copy of reasoning is enough here
        return Routed(
            path="/v1/chat/completions",
            model=model,
            body=orjson.dumps(body),
            stream=bool(parsed.stream),
            client_model=parsed.model,
            options={"omit_thinking": parsed.omit_thinking, "request_id": request_id()},
        )

    def send_error(self, responder: Responder, err: CortexError) -> None:
        send_error(responder, err, request_id())

    def stream_error(self, err: CortexError) -> bytes:
        return _sse("error", error_body(err))

    def keepalive(self, routed: Routed) -> bytes:
        return PING

    async def relay(
        self,
        responder: Responder,
        routed: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        node: str,
        started: bool,
    ) -> Outcome:
        rid = str(routed.options.get("request_id", request_id()))
        headers = [(b"x-cortex-node", node.encode()), (b"request-id", rid.encode())]
        if response.status != 200 or not (routed.stream and response.is_event_stream):
            data = await response.read()
            if response.status != 200:
                err = neuron_error(response.status, data)
                retry = response.header(b"retry-after")
                if retry is not None:
                    err.headers["Retry-After"] = retry.decode()
                if started:
                    responder.end(self.stream_error(err))
                else:
                    send_error(responder, err, rid)
                return Outcome(err.status)
            completion = orjson.loads(data)
            omit = bool(routed.options.get("omit_thinking"))
            message = from_openai(completion, routed.client_model, omit_thinking=omit)
            responder.respond(200, orjson.dumps(message), headers=headers)
            usage = completion.get("usage") or {}
            return Outcome(200, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        if not started:
            responder.start(200, [*SSE_HEADERS, *headers])
        return await self._stream(responder, routed, recorder, response)

    async def _stream(
        self,
        responder: Responder,
        routed: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
    ) -> Outcome:
        outcome = Outcome(200)
        translator = StreamTranslator(
            routed.client_model, omit_thinking=bool(routed.options.get("omit_thinking"))
        )
        pending = b""
        finished = False
        try:
            async for piece in response:
                pending += piece
                if b"\n\n" not in pending:
                    continue
                complete, _, pending = pending.rpartition(b"\n\n")
                out: list[bytes] = []
                for event in complete.split(b"\n\n"):
                    data = event[6:] if event.startswith(b"data: ") else b""
                    if not data:
                        continue
                    if data == b"[DONE]":
                        out += [_sse(n, d) for n, d in translator.finish()]
                        finished = True
                        continue
                    chunk = orjson.loads(data)
                    if "error" in chunk and "choices" not in chunk:
                        err = neuron_error(500, data)
                        out.append(_sse("error", error_body(err)))
                        outcome.status = err.status
                        finished = True
                        continue
                    _count(chunk, outcome, recorder)
                    out += [_sse(n, d) for n, d in translator.feed(chunk)]
                if out:
                    await responder.write(b"".join(out))
        except UpstreamError as exc:
            outcome.status = 502
            error = NeuronUnavailable(f"The neuron failed mid-stream: {exc.message}")
            responder.end(b"".join(_sse(n, d) for n, d in translator.error(error)))
            return outcome
        tail = b"" if finished else b"".join(_sse(n, d) for n, d in translator.finish())
        responder.end(tail)
        return outcome


def send_error(responder: Responder, err: CortexError, rid: str) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    headers.append((b"request-id", rid.encode()))
    responder.respond(err.status, orjson.dumps(error_body(err, rid)), headers=headers)


def _count(chunk: dict[str, Any], outcome: Outcome, recorder: RequestRecorder) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            recorder.chunk()


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def count_tokens(
    request: HttpRequest, responder: Responder, snapshot: Snapshot, pool: UpstreamPool
) -> None:
    """``POST /v1/messages/count_tokens``: counted by a neuron with the model's own tokenizer
    and chat template; the neuron reads only the tokenizer, never the weights."""
    rid = request_id()
    try:
        parsed = parse_count_tokens_request(request.body)
        model = snapshot.resolve(parsed.model)
        if not snapshot.is_known(model):
            raise ModelNotFound(f"model: {parsed.model}", param="model")
        nodes = snapshot.ready_on(model) or [
            n for n in snapshot.allowed_nodes(model) if snapshot.nodes[n].up
        ]
        if not nodes:
            raise NeuronUnavailable(f"No node that can count tokens for {model!r} is up")
        profile = snapshot.profile(model)
        body = to_tokenize(parsed, model, profile.load_source if profile else None)
        endpoint = snapshot.nodes[nodes[0]].endpoint
        headers = [(b"content-type", b"application/json")]
        async with await pool.request(
            endpoint, "POST", "/tokenize", headers, orjson.dumps(body), timeout=60.0
        ) as response:
            data = await response.read()
            if response.status != 200:
                raise neuron_error(response.status, data)
        count = int(orjson.loads(data)["count"])
    except CortexError as err:
        send_error(responder, err, rid)
        return
    responder.respond(
        200, orjson.dumps({"input_tokens": count}), headers=[(b"request-id", rid.encode())]
    )
