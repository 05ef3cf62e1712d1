"""The gateway's HTTP server at its limits, over real sockets: split reads, slow clients,
heads too large, HTTP/1.0, and errors and ``100 Continue`` that keep their place in a
pipeline. (The memory a header flood leaves behind: ``test_http_flood.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cortex.config import CortexConfig, ModelsConfig
from cortex.errors import CortexError
from cortex.gateway.app import GatewayApp
from cortex.gateway.http import HttpRequest, HttpServer, Responder

Handler = Callable[[HttpRequest, Responder], Awaitable[None]]
Serve = Callable[..., Awaitable[HttpServer]]


def _error(path: str, err: CortexError) -> tuple[bytes, bytes]:
    body = {"error": {"message": err.message, "code": err.code}, "path": path}
    return b"application/json", json.dumps(body).encode()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def start(handler: Handler, **limits: Any) -> HttpServer:
        server = HttpServer(handler, _error, **{"max_body": 1000, "keep_alive": 5.0, **limits})
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0.5)


async def echo(request: HttpRequest, responder: Responder) -> None:
    await asyncio.sleep(0.2 if request.path == "/slow" else 0)
    body = {"path": request.path, "query": request.query.decode(), "body": request.body.decode()}
    responder.respond(200, json.dumps(body).encode())


class Client:
    """One raw connection: send bytes, read until a marker or the server's close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.data = reader, writer, b""

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, marker: bytes, count: int = 1, timeout: float = 3.0) -> bytes:
        async with asyncio.timeout(timeout):
            while self.data.count(marker) < count:
                chunk = await self.reader.read(65536)
                assert chunk, f"closed before {marker!r}: {self.data!r}"
                self.data += chunk
        return self.data

    async def until_closed(self, timeout: float = 3.0) -> bytes:
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                self.data += chunk
        return self.data

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    clients: list[Client] = []

    async def open_one(port: int) -> Client:
        clients.append(await Client.open(port))
        return clients[-1]

    yield open_one
    for client in clients:
        await client.aclose()


Connect = Callable[[int], Awaitable[Client]]


def _json_body(data: bytes) -> dict[str, object]:
    return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


# --- a request line that arrives in pieces -----------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "path", "query"),
    [
        (b"GET /nonexist", b"ent/health?a=1 HTTP/1.1", "/nonexistent/health", "a=1"),
        (b"GET /nonexistent", b"/health HTTP/1.1", "/nonexistent/health", ""),
        (b"GET /v1/chat?mo", b"del=x HTTP/1.1", "/v1/chat", "model=x"),
        (b"G", b"ET /whole HTTP/1.1", "/whole", ""),
    ],
)
async def test_a_request_line_split_across_reads_is_routed_whole(
    serve: Serve, connect: Connect, first: bytes, second: bytes, path: str, query: str
) -> None:
    server = await serve(echo)
    client = await connect(server.port)
    await client.send(first)
    await asyncio.sleep(0.05)
    await client.send(second + b"\r\nHost: x\r\n\r\n")
    data = await client.until(b"}")
    assert data.startswith(b"HTTP/1.1 200")
    assert _json_body(data) == {"path": path, "query": query, "body": ""}


# --- heads too large ----------------------------------------------------------------------


async def test_too_many_headers_is_431_and_a_close(serve: Serve, connect: Connect) -> None:
    server = await serve(echo, max_headers=10)
    client = await connect(server.port)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    await client.send(b"GET /many HTTP/1.1\r\n" + headers + b"\r\n")
    data = await client.until_closed()
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in data
    assert _json_body(data)["path"] == "/many"


async def test_a_head_over_the_byte_limit_is_431_without_waiting_for_its_end(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo, max_header_bytes=4096)
    client = await connect(server.port)
    await client.send(b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)  # no end
    data = await client.until_closed()
    assert data.startswith(b"HTTP/1.1 431")
    body = _json_body(data)
    assert body["error"] == {
        "message": "The request head is over 4096 bytes or 100 headers",
        "code": "request_header_fields_too_large",
    }


async def test_many_small_headers_over_the_byte_limit_are_431(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo, max_header_bytes=4096)
    client = await connect(server.port)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(50))  # 50 < 100
    await client.send(b"GET /x HTTP/1.1\r\n" + headers + b"\r\n")
    assert (await client.until_closed()).startswith(b"HTTP/1.1 431")


async def test_a_request_target_over_the_limit_is_414(serve: Serve, connect: Connect) -> None:
    server = await serve(echo, max_header_bytes=4096)
    client = await connect(server.port)
    await client.send(b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\n\r\n")
    assert (await client.until_closed()).startswith(b"HTTP/1.1 414 URI Too Long")


async def test_a_head_under_the_limits_passes(serve: Serve, connect: Connect) -> None:
    server = await serve(echo, max_header_bytes=4096, max_headers=10)
    client = await connect(server.port)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 300) for i in range(10))
    await client.send(b"GET /ok HTTP/1.1\r\n" + headers + b"\r\n")
    assert (await client.until(b"}")).startswith(b"HTTP/1.1 200")


async def test_a_large_read_with_small_heads_in_it_passes(serve: Serve, connect: Connect) -> None:
    server = await serve(echo, max_header_bytes=4096, max_body=100_000)
    client = await connect(server.port)
    body = b"b" * 20_000  # head, body and the next head in one read, well over 4096 bytes
    await client.send(
        b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = await client.until(b"}", 2)
    assert data.count(b"HTTP/1.1 200") == 2
    assert b'"path": "/next"' in data


# --- slow clients -----------------------------------------------------------------------------


async def test_a_head_that_never_ends_is_408_at_its_deadline(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo, header_timeout=0.5)
    client = await connect(server.port)
    started = time.monotonic()
    await client.send(b"GET /slow HTTP/1.1\r\nX-Slow: ")

    async def trickle() -> None:  # slowloris: a byte now and then does not move the deadline
        with contextlib.suppress(ConnectionError):
            for _ in range(30):
                await asyncio.sleep(0.1)
                await client.send(b"X")

    trickling = asyncio.create_task(trickle())
    data = await client.until_closed()
    took = time.monotonic() - started
    trickling.cancel()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in data
    assert 0.4 < took < 2.0, took


async def test_a_body_that_stops_is_408_and_one_that_trickles_is_not(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo, body_timeout=0.5, header_timeout=0.5)
    trickle = await connect(server.port)
    await trickle.send(b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"abcdefgh":  # 1.6 s in all, never 0.5 s quiet
        await asyncio.sleep(0.2)
        await trickle.send(bytes([byte]))
    assert _json_body(await trickle.until(b"}"))["body"] == "abcdefgh"

    stalled = await connect(server.port)
    started = time.monotonic()
    await stalled.send(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    data = await stalled.until_closed()
    assert data.startswith(b"HTTP/1.1 408")
    assert b"No request body bytes for 0.5s" in data
    assert 0.4 < time.monotonic() - started < 2.0


async def test_idle_keep_alive_is_not_a_slow_head(serve: Serve, connect: Connect) -> None:
    server = await serve(echo, header_timeout=0.3)
    client = await connect(server.port)
    await client.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.until(b"}")
    await asyncio.sleep(0.6)  # idle past header_timeout: keep_alive (5 s) governs
    await client.send(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.until(b"}", 2)).count(b"HTTP/1.1 200") == 2


async def test_no_deadline_runs_while_the_server_is_answering(
    serve: Serve, connect: Connect
) -> None:
    async def slow(request: HttpRequest, responder: Responder) -> None:
        await asyncio.sleep(0.8 if request.path == "/slow" else 0)
        responder.respond(200, request.path.encode())

    server = await serve(slow, header_timeout=0.3)
    client = await connect(server.port)
    # The second head is in part while the first is answered: its clock waits its turn.
    await client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n")
    await client.until(b"/slow")
    await client.send(b"Host: x\r\n\r\n")
    assert (await client.until(b"/next")).count(b"HTTP/1.1 200") == 2


# --- HTTP/1.0 ---------------------------------------------------------------------------


async def stream(request: HttpRequest, responder: Responder) -> None:
    responder.start(200, [(b"content-type", b"text/event-stream")])
    await responder.write(b"data: one\n\n")
    await asyncio.sleep(0.05)
    responder.end(b"data: two\n\n")


async def test_http10_gets_a_close_delimited_stream(serve: Serve, connect: Connect) -> None:
    server = await serve(stream)
    client = await connect(server.port)
    await client.send(b"GET /s HTTP/1.0\r\n\r\n")
    head, _, body = (await client.until_closed()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head
    assert body == b"data: one\n\ndata: two\n\n"


async def test_http11_still_gets_a_chunked_stream(serve: Serve, connect: Connect) -> None:
    server = await serve(stream)
    client = await connect(server.port)
    await client.send(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await client.until(b"0\r\n\r\n")
    assert b"transfer-encoding: chunked" in data
    assert data.endswith(b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n")


async def test_http10_closes_after_each_response_unless_kept_alive(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo)
    plain = await connect(server.port)
    await plain.send(b"GET /a HTTP/1.0\r\n\r\n")
    assert b"connection: close" in await plain.until_closed()

    kept = await connect(server.port)
    await kept.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"connection: keep-alive" in await kept.until(b"}")
    await kept.send(b"GET /b HTTP/1.0\r\n\r\n")
    data = await kept.until_closed()
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.endswith(b'"path": "/b", "query": "", "body": ""}')


# --- pipelines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", b"413"),
        (b"GET /h HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", b"431"),
        (b"GET /u HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"400"),
    ],
)
async def test_an_error_in_a_pipeline_waits_for_the_responses_before_it(
    serve: Serve, connect: Connect, bad: bytes, status: bytes
) -> None:
    server = await serve(echo)
    client = await connect(server.port)
    await client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + bad)
    data = await client.until_closed()
    body = b'{"path": "/slow", "query": "", "body": ""}'
    first = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    assert data.startswith(first)
    assert data[len(first) :].startswith(b"HTTP/1.1 " + status)
    assert data.count(b"HTTP/1.1 ") == 2


async def test_an_error_after_a_stream_waits_for_its_end(serve: Serve, connect: Connect) -> None:
    server = await serve(stream)
    client = await connect(server.port)
    await client.send(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
    data = await client.until_closed()
    end = data.index(b"0\r\n\r\n")
    assert data.index(b"HTTP/1.1 400") == end + 5


async def test_100_continue_waits_for_the_response_before_it(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo)
    client = await connect(server.port)
    await client.send(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    data = await client.until(b"100 Continue")
    assert data.index(b'"/slow"') < data.index(b"HTTP/1.1 100 Continue\r\n\r\n")
    await client.send(b"ok")
    data = await client.until(b"}", 2)
    after = data.partition(b"HTTP/1.1 100 Continue\r\n\r\n")[2]
    assert after.startswith(b"HTTP/1.1 200")
    assert _json_body(after)["body"] == "ok"


async def test_no_100_continue_for_http10_or_when_the_body_came_anyway(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(echo)
    client = await connect(server.port)
    await client.send(b"POST /a HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
    assert b"100 Continue" not in await client.until_closed()
    piped = await connect(server.port)
    await piped.send(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
    )
    data = await piped.until(b"}", 2)
    assert b"100 Continue" not in data


async def test_the_gateway_section_of_cortex_toml_sets_the_limits() -> None:
    gateway = {"header_timeout": "500ms", "body_timeout": "2s", "max_header_bytes": "8KiB"}
    config = CortexConfig.model_validate({"gateway": {**gateway, "max_headers": 20}})
    app = GatewayApp(config, ModelsConfig())
    try:
        limits = app.server().limits
    finally:
        await app.aclose()
    assert (limits.header_timeout, limits.body_timeout) == (0.5, 2.0)
    assert (limits.max_header_bytes, limits.max_headers) == (8192, 20)
    with pytest.raises(ValueError, match="header_timeout"):
        CortexConfig.model_validate({"gateway": {"header_timeout": "0s"}})
