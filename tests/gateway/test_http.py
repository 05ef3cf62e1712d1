"""The gateway's HTTP server against real sockets: framing, keep-alive, limits, cancels."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from cortex.errors import CortexError
from cortex.gateway.http import HttpRequest, HttpServer, Responder

Handler = Callable[[HttpRequest, Responder], Awaitable[None]]


def _error(path: str, err: CortexError) -> tuple[bytes, bytes]:
    return b"application/json", json.dumps({"error": err.message, "path": path}).encode()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[HttpServer]]]:
    servers: list[HttpServer] = []

    async def start(handler: Handler) -> HttpServer:
        server = HttpServer(handler, _error, max_body=1000, keep_alive=5.0)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0.5)


async def echo(request: HttpRequest, responder: Responder) -> None:
    body = json.dumps(
        {"method": request.method, "path": request.path, "query": request.query.decode(),
         "body": request.body.decode(), "x": (request.header(b"x-test") or b"").decode()}
    ).encode()  # fmt: skip
    responder.respond(200, body, headers=[(b"x-served", b"yes")])


async def _raw(port: int, data: bytes, *, until: bytes | None = None, count: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2.0)
            if not chunk:
                break
            received += chunk
            if until is not None and received.count(until) >= count:
                break
    finally:
        writer.close()
    return received


async def test_request_and_response_over_keep_alive(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    server = await serve(echo)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        for i in range(3):
            response = await client.post(f"/p{i}?a=1", content=b"hello", headers={"X-Test": "t"})
            assert response.status_code == 200
            assert response.headers["x-served"] == "yes"
            assert response.json() == {
                "method": "POST", "path": f"/p{i}", "query": "a=1", "body": "hello", "x": "t"
            }  # fmt: skip
    assert len(server.connections) <= 1


async def test_pipelined_requests_are_answered_in_order(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    server = await serve(echo)
    two = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"
    data = await _raw(server.port, two, until=b"}", count=2)
    assert data.index(b"/first") < data.index(b"/second")
    assert data.count(b"HTTP/1.1 200 OK") == 2


async def test_chunked_request_body_and_expect_continue(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    server = await serve(echo)
    request = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    data = await _raw(server.port, request, until=b"}")
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert b'"body": "abcde"' in data


async def test_bodies_over_the_limit_are_413_and_the_connection_closes(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    server = await serve(echo)
    declared = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    data = await _raw(server.port, declared)
    assert data.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in data
    assert b"5000" in data
    chunked = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"1f4\r\n" + b"x" * 500 + b"\r\n" for _ in range(3))
    data = await _raw(server.port, chunked)
    assert data.startswith(b"HTTP/1.1 413")


async def test_malformed_request_is_400(serve: Callable[..., Awaitable[HttpServer]]) -> None:
    server = await serve(echo)
    data = await _raw(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")


async def test_head_sends_no_body(serve: Callable[..., Awaitable[HttpServer]]) -> None:
    server = await serve(echo)
    data = await _raw(server.port, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length:" in head
    assert body == b""


async def test_streamed_response_arrives_chunk_by_chunk(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    release = asyncio.Event()

    async def stream(request: HttpRequest, responder: Responder) -> None:
        responder.start(200, [(b"content-type", b"text/event-stream")])
        await responder.write(b"data: one\n\n")
        await release.wait()
        responder.end(b"data: two\n\n")

    server = await serve(stream)
    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", f"http://127.0.0.1:{server.port}/s") as response,
    ):
        chunks = response.aiter_bytes()
        assert await asyncio.wait_for(chunks.__anext__(), 2.0) == b"data: one\n\n"
        release.set()
        assert b"".join([c async for c in chunks]) == b"data: two\n\n"


async def test_client_disconnect_cancels_the_handler(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    cancelled = asyncio.Event()
    seen: list[Responder] = []

    async def slow(request: HttpRequest, responder: Responder) -> None:
        seen.append(responder)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = await serve(slow)
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), 2.0)
    assert seen[0].disconnected


async def test_a_failing_handler_costs_one_request_not_the_connection(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    async def flaky(request: HttpRequest, responder: Responder) -> None:
        if request.path == "/boom":
            raise RuntimeError("bug")
        await echo(request, responder)

    server = await serve(flaky)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        boom = await client.get("/boom")
        assert boom.status_code == 500
        assert "Traceback" not in boom.text
        assert (await client.get("/fine")).status_code == 200


async def test_stop_lets_requests_in_flight_finish(
    serve: Callable[..., Awaitable[HttpServer]],
) -> None:
    async def slowish(request: HttpRequest, responder: Responder) -> None:
        await asyncio.sleep(0.3)
        responder.respond(200, b"done")

    server = await serve(slowish)
    async with httpx.AsyncClient() as client:
        pending = asyncio.ensure_future(client.get(f"http://127.0.0.1:{server.port}/"))
        await asyncio.sleep(0.1)
        await server.stop(grace=2.0)
        response = await pending
    assert response.text == "done"
