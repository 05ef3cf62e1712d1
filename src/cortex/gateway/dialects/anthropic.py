"""The Anthropic dialect at the gateway: Messages in, OpenAI chat to the neuron, back.

Requests are validated and translated once (``gateway.dialects.anthropic_request``); the
neuron's answer is parsed into typed OpenAI chunks (``gateway.dialects.relay``) and translated
into Anthropic's events (``gateway.dialects.anthropic_stream``), never by rewriting SSE text.
Errors use Anthropic's envelope with a ``request_id``; a stream waiting on a cold model
gets ``ping`` events; a neuron that dies mid-stream ends it with an ``error`` event.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import orjson
from pydantic import ValidationError

from cortex import sse
from cortex.errors import (
    BadUpstream,
    ContextLengthExceeded,
    CortexError,
    InsufficientMemory,
    ModelNotFound,
    NeuronUnavailable,
    NoCapacity,
)
from cortex.gateway.catalogue import check_serves
from cortex.gateway.dialects.anthropic_reply import from_openai, prompt_too_long
from cortex.gateway.dialects.anthropic_request import to_openai, to_tokenize
from cortex.gateway.dialects.anthropic_stream import Event, StreamTranslator
from cortex.gateway.dialects.relay import count_usage, parse_event, upstream_events
from cortex.gateway.http import HttpRequest, Responder
from cortex.gateway.metrics import RequestRecorder
from cortex.gateway.neurons import relay_headers
from cortex.gateway.proxy import Outcome, Routed, dump_body, send_error
from cortex.gateway.state import Snapshot
from cortex.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from cortex.protocol.anthropic import (
    error_body,
    parse_count_tokens_request,
    parse_messages_request,
)
from cortex.protocol.openai import ChatCompletion, error_from_body
from cortex.protocol.openai_reply import ChatCompletionChunk

PING = sse.encode({"type": "ping"}, "ping")


def request_id() -> str:
    return "req_" + secrets.token_hex(12)


def neuron_error(status: int, data: bytes) -> CortexError:
    """The neuron's OpenAI error envelope → the CortexError an Anthropic client should see."""
    err = error_from_body(status, data)
    if isinstance(err, ContextLengthExceeded):
        prompt, context = err.extra.get("prompt_tokens"), err.extra.get("context_length")
        if isinstance(prompt, int) and isinstance(context, int):
            return ContextLengthExceeded(prompt_too_long(prompt, context))
    if isinstance(err, InsufficientMemory):  # Anthropic's API has no 507: "overloaded"
        return NoCapacity(err.message)
    return err


class AnthropicDialect:
    name = "anthropic"

    def parse(self, request: HttpRequest, snapshot: Snapshot) -> Routed:
        parsed = parse_messages_request(request.body)
        model = snapshot.resolve(parsed.model)
        check_serves(snapshot, model, parsed.model, "chat")
        body = to_openai(parsed, model)
        body["reasoning_field"] = "reasoning_content"  # one copy of reasoning is enough here
        return Routed(
            path="/v1/chat/completions",
            model=model,
            body=dump_body(body),
            stream=bool(parsed.stream),
            client_model=parsed.model,
            options={"omit_thinking": parsed.omit_thinking, "request_id": request_id()},
        )

    def send_error(self, responder: Responder, err: CortexError) -> None:
        _send_error(responder, err, request_id())

    def stream_error(self, err: CortexError) -> bytes:
        return sse.encode(error_body(err), "error")

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
            try:
                if response.status != 200:
                    err = neuron_error(response.status, data)
                    retry = response.header(b"retry-after")
                    if retry is not None:
                        err.headers["Retry-After"] = retry.decode()
                    raise err
                message, outcome = _whole_reply(data, routed)
            except CortexError as err:
                if started:
                    responder.end(self.stream_error(err))
                else:
                    _send_error(responder, err, rid)
                return Outcome(err.status)
            responder.respond(200, orjson.dumps(message), headers=headers)
            return outcome
        if not started:
            responder.start(200, [*sse.RAW_HEADERS, *headers])
        return await self._stream(responder, routed, recorder, response, rid)

    async def _stream(
        self,
        responder: Responder,
        routed: Routed,
        recorder: RequestRecorder,
        response: UpstreamResponse,
        rid: str,
    ) -> Outcome:
        outcome = Outcome(200)
        translator = StreamTranslator(
            routed.client_model,
            omit_thinking=bool(routed.options.get("omit_thinking")),
            request_id=rid,
        )
        finished = False
        try:
            async for events in upstream_events(response):
                out: list[Event] = []
                for event in events:
                    if finished:
                        continue
                    if event.is_done():
                        out += translator.finish()
                        finished = True
                        continue
                    chunk = parse_event(ChatCompletionChunk, event)
                    if chunk.error is not None and not chunk.choices:
                        err = neuron_error(500, event.data)
                        out += translator.error(err)
                        outcome.status = err.status
                        finished = True
                        continue
                    count_usage(outcome, chunk.usage)
                    if chunk.has_output:
                        recorder.chunk()
                    out += translator.feed(chunk)
                if out:
                    await responder.write(_frames(out))
        except UpstreamError as exc:
            outcome.status = 502
            error = NeuronUnavailable(f"The neuron failed mid-stream: {exc.message}")
            responder.end(_frames(translator.error(error)))
            return outcome
        except CortexError as err:  # an event that does not parse, or one past the size cap
            outcome.status = err.status
            responder.end(_frames(translator.error(err)))
            return outcome
        responder.end(b"" if finished else _frames(translator.finish()))
        return outcome


def _whole_reply(data: bytes, routed: Routed) -> tuple[dict[str, object], Outcome]:
    """A neuron's ``chat.completion`` → the Anthropic message, and what it counts."""
    try:
        completion = ChatCompletion.model_validate_json(data)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise BadUpstream(f"The neuron's reply is not a chat completion: {problem}") from None
    omit = bool(routed.options.get("omit_thinking"))
    message = from_openai(completion, routed.client_model, omit_thinking=omit)
    outcome = Outcome(200)
    if completion.usage is not None:
        outcome.prompt_tokens = completion.usage.prompt_tokens
        outcome.completion_tokens = completion.usage.completion_tokens
    return message, outcome


def _frames(events: list[Event]) -> bytes:
    return b"".join(sse.encode(data, name) for name, data in events)


def _send_error(responder: Responder, err: CortexError, rid: str) -> None:
    send_error(responder, err, error_body(err, rid), [(b"request-id", rid.encode())])


def _token_count(data: bytes) -> int:
    """The ``count`` of a neuron's ``/tokenize`` answer; ``BadUpstream`` if there is none."""
    try:
        count = orjson.loads(data).get("count")
    except (orjson.JSONDecodeError, AttributeError):
        count = None
    if not isinstance(count, int):
        raise BadUpstream("The neuron's /tokenize answer has no count")
    return count


async def count_tokens(
    request: HttpRequest,
    responder: Responder,
    snapshot: Snapshot,
    pool: UpstreamPool,
    may_use: Callable[[str, str], bool] | None = None,
) -> None:
    """``POST /v1/messages/count_tokens``: counted by a neuron with the model's own tokenizer
    and chat template; the neuron reads only the tokenizer, never the weights. ``may_use``:
    the API key's rights (client's name, model id); a model outside them is not found."""
    rid = request_id()
    try:
        parsed = parse_count_tokens_request(request.body)
        model = snapshot.resolve(parsed.model)
        if not snapshot.is_known(model) or (
            may_use is not None and not may_use(parsed.model, model)
        ):
            raise ModelNotFound(f"model: {parsed.model}", param="model")
        nodes = snapshot.ready_on(model) or [
            n for n in snapshot.allowed_nodes(model) if snapshot.nodes[n].up
        ]
        if not nodes:
            raise NeuronUnavailable(f"No node that can count tokens for {model!r} is up")
        profile = snapshot.profile(model)
        body = to_tokenize(parsed, model, profile.load_source if profile else None)
        target = snapshot.nodes[nodes[0]]
        headers = relay_headers(target.token)  # the neuron's token, never the client's
        async with await pool.request(
            target.endpoint, "POST", "/tokenize", headers, dump_body(body), timeout=60.0
        ) as response:
            data = await response.read()
            if response.status != 200:
                raise neuron_error(response.status, data)
        count = _token_count(data)
    except CortexError as err:
        _send_error(responder, err, rid)
        return
    responder.respond(
        200, orjson.dumps({"input_tokens": count}), headers=[(b"request-id", rid.encode())]
    )
