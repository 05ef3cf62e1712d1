"""The gateway's relay, in-process: fake neurons that speak HTTP, in-memory lifecycle."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cortex import sse
from cortex.config import (
    CortexConfig,
    GatewaySection,
    KeyEntry,
    ModelProfile,
    ModelsConfig,
    NeuronEntry,
)
from cortex.errors import RequestTooLarge, UpstreamTimeout
from cortex.gateway import proxy
from cortex.gateway.app import GatewayApp, error_payload
from cortex.gateway.dialects import openai as openai_dialect
from cortex.gateway.http import HttpRequest, HttpServer, Responder
from tests.gateway.fakes import FakeNeurons

HELLO = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "m0",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class FakeChat:
    """A neuron's chat endpoint: answers, streams, refuses or stalls as told."""

    name: str
    status: int = 200
    stall: float = 0.0
    stall_mid_stream: float = 0.0  # silent this long after the first chunk (a frozen neuron)
    die_mid_stream: bool = False
    crlf: bool = False  # end lines with "\r\n", as some servers do
    garbage: bytes | None = None  # raw bytes written after the first chunk
    error: dict[str, Any] | None = None  # the error envelope's body when status != 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: HttpRequest, responder: Responder) -> None:
        body = json.loads(request.body)
        self.bodies.append(body)
        try:
            await asyncio.sleep(self.stall)
            if self.status != 200:
                error = self.error or {"message": f"{self.name} says no", "type": "x", "code": None}
                responder.respond(self.status, json.dumps({"error": error}).encode())
                return
            if not body.get("stream"):
                reply = {"id": "c1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant",
                                      "content": f"from {self.name}"}, "finish_reason": "stop"}],
                         "usage": USAGE}  # fmt: skip
                responder.respond(200, json.dumps(reply).encode())
                return
            responder.start(200, [(b"content-type", b"text/event-stream")])
            await responder.write(self._framed(_chunk({"role": "assistant", "content": ""})))
            await asyncio.sleep(self.stall_mid_stream)
            if self.garbage is not None:
                await responder.write(self.garbage)
            for word in ("one", " two"):
                await responder.write(self._framed(_chunk({"content": word})))
                await asyncio.sleep(0.01)
                if self.die_mid_stream:
                    raise RuntimeError("the neuron's process died")
            await responder.write(_chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "c1", "object": "chat.completion.chunk", "choices": [],
                         "usage": USAGE}  # fmt: skip
                await responder.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await asyncio.sleep(self.stall)
            responder.end(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    def _framed(self, event: bytes) -> bytes:
        return event.replace(b"\n", b"\r\n") if self.crlf else event


@dataclass
class Rig:
    url: str
    app: GatewayApp
    fakes: FakeNeurons
    chats: dict[str, FakeChat]


@asynccontextmanager
async def serve_fleet(
    chats: dict[str, FakeChat],
    sizes: dict[str, int],
    models: ModelsConfig,
    gateway: GatewaySection,
    keys: list[KeyEntry] | None = None,
) -> AsyncIterator[tuple[str, GatewayApp, FakeNeurons]]:
    """A gateway in-process on a free port, in front of one HTTP fake neuron per chat (each
    node 10,000 bytes of memory, ``sizes`` the models'); yields its URL, app and lifecycle
    fakes, and stops it all after."""
    servers = {}
    for name, chat in chats.items():
        server = HttpServer(chat, lambda p, e: (b"application/json", b"{}"), max_body=10**6)
        await server.start("127.0.0.1", 0)
        servers[name] = server
    fakes = FakeNeurons(dict.fromkeys(chats, 10_000), sizes)
    config = CortexConfig(
        gateway=gateway,
        neurons=[
            NeuronEntry(name=n, endpoint=f"http://127.0.0.1:{s.port}") for n, s in servers.items()
        ],
        keys=keys or [],
    )
    app = GatewayApp(config, models, client=fakes)  # type: ignore[arg-type]
    await app.start()
    front = app.server()
    await front.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{front.port}", app, fakes
    finally:
        await front.stop(grace=0.2)
        await app.aclose()
        for server in servers.values():
            await server.stop(grace=0.2)


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """Two nodes with m0 ready on both unless a test's marker-free params say otherwise."""
    options: dict[str, Any] = getattr(request, "param", {})
    chats = {name: FakeChat(name) for name in ("a", "b")}
    gateway = GatewaySection(
        poll_interval=0.05, request_timeout=options.get("request_timeout", 5.0), load_timeout=5
    )
    models = ModelsConfig(
        models=[ModelProfile(id="m0", neurons=["a", "b"]), ModelProfile(id="m1", neurons=["a"])],
        aliases={"gpt-4o": "m0"},
    )
    sizes = {"m0": 100, "m1": 100}
    async with serve_fleet(chats, sizes, models, gateway) as (url, app, fakes):
        yield Rig(url, app, fakes, chats)


async def _post(rig: Rig, body: dict[str, Any], timeout: float = 10.0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"{rig.url}/v1/chat/completions", json=body)


async def test_alias_is_rewritten_and_the_node_named(rig: Rig) -> None:
    response = await _post(rig, {"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 200
    assert response.headers["x-cortex-node"] == "a"
    assert rig.chats["a"].bodies[-1]["model"] == "m0"


async def test_usage_chunk_is_asked_for_and_removed_unless_wanted(rig: Rig) -> None:
    plain = await _post(rig, {"model": "m0", "messages": HELLO, "stream": True})
    assert rig.chats["a"].bodies[-1]["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in plain.content
    assert plain.content.endswith(b"data: [DONE]\n\n")
    wanted = await _post(
        rig,
        {
            "model": "m0",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert b'"usage":{"prompt_tokens":3' in wanted.content.replace(b" ", b"")
    metrics = rig.app.metrics.render().decode()
    assert 'cortex_generation_tokens_total{model="m0",node="a"} 4.0' in metrics


async def test_a_refusing_node_is_retried_on_the_other_before_any_byte(rig: Rig) -> None:
    await rig.app.fleet.ensure("m0", "a", lease=False)
    await rig.app.fleet.ensure("m0", "b", lease=False)
    rig.chats["a"].status = 503
    response = await _post(rig, {"model": "m0", "messages": HELLO})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from b"
    assert len(rig.chats["a"].bodies) == 1


async def test_cold_stream_gets_comments_while_its_model_loads(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "KEEPALIVE_EVERY", 0.05)
    rig.fakes.load_delay = 0.3
    response = await _post(rig, {"model": "m1", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    assert response.content.startswith(b": loading m1\n\n")
    assert b'"content":"one"' in response.content
    assert rig.fakes.loads == [("a", "m1")]


async def test_a_client_that_leaves_closes_the_upstream_request(rig: Rig) -> None:
    rig.chats["a"].stall = 5.0
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                f"{rig.url}/v1/chat/completions",
                json={"model": "m0", "messages": HELLO},
                timeout=0.3,
            )
    await asyncio.wait_for(rig.chats["a"].disconnected.wait(), 2.0)
    assert rig.app.fleet.in_flight.busy == {}


@pytest.mark.parametrize("rig", [{"request_timeout": 0.2}], indirect=True)
async def test_a_silent_neuron_is_a_504(rig: Rig) -> None:
    rig.chats["a"].stall = 2.0
    response = await _post(rig, {"model": "m0", "messages": HELLO})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"


async def test_all_allowed_nodes_down_is_a_503(rig: Rig) -> None:
    rig.fakes.nodes["a"].up = False
    rig.app.fleet.node_failed("a", "gone")
    await asyncio.sleep(0.1)
    response = await _post(rig, {"model": "m1", "messages": HELLO})
    assert response.status_code == 503
    assert "down" in response.json()["error"]["message"]


async def test_unknown_model_and_bad_json(rig: Rig) -> None:
    missing = await _post(rig, {"model": "nope", "messages": HELLO})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    async with httpx.AsyncClient() as client:
        bad = await client.post(f"{rig.url}/v1/chat/completions", content=b"{oops")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_anthropic_stream_pings_while_loading_and_errors_if_the_neuron_dies(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "KEEPALIVE_EVERY", 0.05)
    rig.fakes.load_delay = 0.3
    body = {"model": "m1", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as client:
        cold = await client.post(f"{rig.url}/v1/messages", json=body)
    assert cold.status_code == 200
    assert cold.content.startswith(b"event: ping\n")
    assert b"event: message_start" in cold.content
    assert cold.content.rstrip().endswith(b'"type":"message_stop"}')
    assert rig.chats["a"].bodies[-1]["stream_options"]["continuous_usage_stats"] is True

    rig.chats["a"].die_mid_stream = True
    async with httpx.AsyncClient(timeout=10) as client:
        dying = await client.post(f"{rig.url}/v1/messages", json=body)
    assert dying.status_code == 200
    events = [line for line in dying.text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "event: error"
    last = json.loads(dying.text.strip().splitlines()[-1].removeprefix("data: "))
    assert last["type"] == "error"
    assert last["error"]["type"] == "overloaded_error"
    assert "mid-stream" in last["error"]["message"]


async def test_anthropic_prompt_too_long_in_anthropics_words(rig: Rig) -> None:
    rig.chats["a"].status = 400
    rig.chats["a"].error = {
        "message": "This model's maximum context length is 65536 tokens. However, ...",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
        "prompt_tokens": 70001, "context_length": 65536,
    }  # fmt: skip
    await rig.app.fleet.ensure("m0", "a", lease=False)
    body = {"model": "m0", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{rig.url}/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 70001 tokens > 65536 maximum",
    }
    assert response.json()["request_id"].startswith("req_")


def _stream_text(body: bytes) -> str:
    """The text of an OpenAI chat stream, read the way the SDKs read it."""
    out = []
    for event in sse.events([body]):
        if not event.is_done():
            for choice in json.loads(event.data).get("choices", []):
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


async def test_crlf_framed_streams_are_relayed_whole(rig: Rig) -> None:
    rig.chats["a"].crlf = True
    plain = await _post(rig, {"model": "m0", "messages": HELLO, "stream": True})
    assert _stream_text(plain.content) == "one two"
    body = {"model": "m0", "max_tokens": 16, "stream": True, "messages": HELLO}
    async with httpx.AsyncClient(timeout=10) as client:
        translated = await client.post(f"{rig.url}/v1/messages", json=body)
    deltas = [json.loads(e.data) for e in sse.events([translated.content])]
    text = [d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta"]
    assert "".join(text) == "one two"


@pytest.mark.parametrize(
    "garbage",
    [b"data: {not json\n\n", b'data: {"choices": 5}\n\n', b"data: " + b"x" * (17 << 20)],
    ids=["not-json", "wrong-shape", "past-the-cap"],
)
async def test_an_upstream_event_that_does_not_parse_ends_the_stream_in_the_dialect(
    rig: Rig, garbage: bytes
) -> None:
    rig.chats["a"].garbage = garbage
    chat = await _post(rig, {"model": "m0", "messages": HELLO, "stream": True})
    events = list(sse.events([chat.content]))
    assert events[-1].is_done()
    error = json.loads(events[-2].data)["error"]
    assert error["code"] == "bad_upstream"
    assert error["type"] == "server_error"
    body = {"model": "m0", "max_tokens": 16, "stream": True, "messages": HELLO}
    async with httpx.AsyncClient(timeout=10) as client:
        translated = await client.post(f"{rig.url}/v1/messages", json=body)
    last = list(sse.events([translated.content]))[-1]
    assert last.name == "error"
    assert json.loads(last.data)["error"]["type"] == "api_error"


@pytest.mark.parametrize("rig", [{"request_timeout": 0.2}], indirect=True)
async def test_a_neuron_silent_mid_stream_ends_each_stream_with_its_dialects_error(
    rig: Rig,
) -> None:
    rig.chats["a"].stall_mid_stream = 2.0
    chat = await _post(rig, {"model": "m0", "messages": HELLO, "stream": True})
    events = list(sse.events([chat.content]))
    assert events[-1].is_done()
    assert json.loads(events[-2].data)["error"]["type"] == "timeout_error"

    async with httpx.AsyncClient(timeout=10) as client:
        body = {"model": "m0", "input": "hi", "stream": True}
        responses = await client.post(f"{rig.url}/v1/responses", json=body)
        body = {"model": "m0", "max_tokens": 16, "stream": True, "messages": HELLO}
        messages = await client.post(f"{rig.url}/v1/messages", json=body)
    failed = list(sse.events([responses.content]))[-1]
    assert failed.name == "response.failed"
    data = json.loads(failed.data)
    assert data["type"] == "response.failed"
    assert data["sequence_number"] == 1  # after the one event the neuron sent
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["code"] == "timeout"
    last = list(sse.events([messages.content]))[-1]
    assert last.name == "error"
    assert json.loads(last.data)["error"]["type"] == "timeout_error"
    assert json.loads(last.data)["request_id"] == messages.headers["request-id"]


@pytest.mark.parametrize("rig", [{"request_timeout": 0.2}], indirect=True)
async def test_a_silent_neuron_is_a_504_in_each_dialects_envelope(rig: Rig) -> None:
    rig.chats["a"].stall = 2.0
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"model": "m0", "input": "hi"}
        responses = await client.post(f"{rig.url}/v1/responses", json=body)
        body = {"model": "m0", "max_tokens": 16, "messages": HELLO}
        messages = await client.post(f"{rig.url}/v1/messages", json=body)
    assert responses.status_code == 504
    assert responses.json()["error"]["type"] == "timeout_error"
    assert messages.status_code == 504
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "timeout_error"


def test_a_responses_stream_fails_with_the_response_it_opened() -> None:
    trail = openai_dialect._Trail(events=7, response={"id": "resp_1", "model": "m0"})
    event = list(sse.events([openai_dialect.response_failed(UpstreamTimeout("late"), trail)]))
    data = json.loads(event[0].data)
    assert event[0].name == "response.failed"
    assert data["sequence_number"] == 7
    assert data["response"]["id"] == "resp_1"
    assert data["response"]["error"] == {"code": "timeout", "message": "late"}


BOTH = ("/v1/messages", "/v1/messages/count_tokens")
HI = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("content", "paths"),
    [
        (b"{oops", BOTH),
        (b'{"model": "m0", "max_tokens": 18446744073709551616, ' + HI + b"}", BOTH[:1]),
        (b'{"model": "m0", "max_tokens": 16, "tools": [{"name": "t", "input_schema": '
         b'{"maxLength": -99999999999999999999999}}], ' + HI + b"}", BOTH),
    ],
    ids=["not-json", "2**64", "a-huge-negative-int"],
)  # fmt: skip
async def test_bad_messages_bodies_are_400s_in_anthropics_envelope(
    rig: Rig, content: bytes, paths: tuple[str, ...]
) -> None:
    for path in paths:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(f"{rig.url}{path}", content=content)
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"] == "error"
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert rig.chats["a"].bodies == []  # refused at the gateway


async def test_every_error_under_v1_messages_is_in_anthropics_envelope(rig: Rig) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        wrong_method = await client.get(f"{rig.url}/v1/messages")
        no_route = await client.post(f"{rig.url}/v1/messages/batches", json={})
        elsewhere = await client.get(f"{rig.url}/v1/nowhere")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert no_route.status_code == 404
    assert no_route.json()["error"]["type"] == "not_found_error"
    assert "type" not in elsewhere.json()  # OpenAI's envelope off /v1/messages
    _, body = error_payload("/v1/messages", RequestTooLarge("too big"))
    assert json.loads(body)["error"] == {"type": "request_too_large", "message": "too big"}
    _, body = error_payload("/v1/chat/completions", RequestTooLarge("too big"))
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
