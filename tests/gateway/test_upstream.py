"""The gateway's HTTP/1.1 client to neurons, against real servers on 127.0.0.1.

Most tests use ``Server``: a tiny asyncio HTTP/1.1 server whose per-test handler writes raw
bytes, so each test controls framing, timing and disconnects exactly and can count TCP
connections. One test runs a uvicorn ASGI app in the same loop (what a neuron really is).
Every scenario runs on the default asyncio loop; the core ones run again under uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
import uvloop

from cortex.errors import NeuronUnavailable, UpstreamTimeout
from cortex.gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)
from cortex.gateway.upstream_conn import Connection

# -- a raw test server ------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes
    n: int  # 1 for the first request on its connection

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


async def _read_request(reader: asyncio.StreamReader, n: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ")
    headers = [(k.lower(), v) for k, v in (line.split(": ", 1) for line in lines[1:] if line)]
    length = int(dict(headers).get("content-length", "0"))
    return Request(method, path, headers, await reader.readexactly(length), n)


class Server:
    """HTTP/1.1 on 127.0.0.1:<free port>; the handler answers (False: close the connection)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0  # accepted so far
        self.open = 0  # open right now
        self.requests: list[Request] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        n = 0
        try:
            while True:
                n += 1
                request = await _read_request(reader, n)
                if request is None:
                    break
                self.requests.append(request)
                if await self.handler(request, reader, writer) is False:
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly: asyncio logs cancelled handler tasks
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)


def response(body: bytes = b"", status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def echo(request: Request, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(response(f"{request.method} {request.path} {request.body.decode()}".encode()))


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state that has no event
            await asyncio.sleep(0.002)


async def wait_eof(reader: asyncio.StreamReader) -> None:
    """Park a handler until the client goes away."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[Server, UpstreamPool]]:
    async with Server(handler) as server:
        pool = UpstreamPool()
        try:
            yield server, pool
        finally:
            await pool.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- framing ----------------------------------------------------------------------------


class _CountingTransport:
    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_content_length_body_and_request_framing() -> None:
    async with serving(echo) as (server, pool):
        ep = server.endpoint
        resp = await pool.request(ep, "GET", "/health", [])
        assert (resp.status, await resp.read()) == (200, b"GET /health ")
        conn = pool._hosts[ep].idle[0]
        counting = _CountingTransport(conn.transport)
        conn.transport = counting  # type: ignore[assignment]
        headers = [(b"X-Trace", b"abc"), (b"Host", b"evil"), (b"content-length", b"999")]
        resp = await pool.request(ep, "POST", "/v1/chat/completions", headers, b'{"a": 1}')
        assert resp.status == 200
        assert resp.header(b"Content-Length") == b"34"
        assert resp.header(b"x-missing") is None
        assert resp.headers == [(b"content-length", b"34")]
        assert await resp.read() == b'POST /v1/chat/completions {"a": 1}'
        assert counting.writes == 1  # request line, headers and body in one write
        seen = server.requests[-1]
        assert seen.header("host") == [ep.removeprefix("http://")]
        assert seen.header("content-length") == ["8"]
        assert seen.header("x-trace") == ["abc"]
        assert await resp.read() == b""  # the body is handed out once


async def test_status_and_empty_body() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(response(status=404) if request.path == "/nope" else b"HTTP/1.1 204 N\r\n\r\n")

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "GET", "/nope", [])
        assert (resp.status, await resp.read()) == (404, b"")
        resp = await pool.request(server.endpoint, "DELETE", "/x", [])
        assert (resp.status, await resp.read()) == (204, b"")
        assert server.connections == 1


async def test_chunked_body() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(CHUNKED_HEAD + chunk(b"hello "))
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(chunk(b"chunked ") + chunk(b"world"))
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")

    async with serving(handler) as (server, pool):
        for _ in range(3):
            resp = await pool.request(server.endpoint, "GET", "/", [])
            assert await resp.read() == b"hello chunked world"
        assert server.connections == 1  # chunked responses keep the connection


async def test_body_ended_by_connection_close() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"the end")
        return False

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "GET", "/", [])
        assert await resp.read() == b"until the end"
        assert pool.idle_count(server.endpoint) == 0


async def test_sse_events_arrive_one_by_one_without_buffering() -> None:
    first, second = b"data: one\n\n", b'data: {"two": 2}\n\ndata: [DONE]\n\n'
    go_on = asyncio.Event()

    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(CHUNKED_HEAD + chunk(first))
        await w.drain()
        async with asyncio.timeout(2):  # the client must see event one while we wait
            await go_on.wait()
        w.write(chunk(second) + b"0\r\n\r\n")

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "POST", "/v1/chat/completions", [])
        assert resp.header(b"content-type") == b"text/event-stream"
        events = aiter(resp)
        async with asyncio.timeout(1):
            assert await anext(events) == first  # de-chunked, before event two exists
        go_on.set()
        assert b"".join([c async for c in events]) == second
        assert pool.idle_count(server.endpoint) == 1


async def test_back_pressure_pauses_reading_then_drains() -> None:
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(response(big))

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "GET", "/big", [])
        conn = resp._conn
        assert conn is not None
        await until(lambda: conn.paused)
        await asyncio.sleep(0.02)
        assert conn.buffered < 2 * (1 << 20)  # reading stopped near the high-water mark
        assert await resp.read() == big
        assert pool.idle_count(server.endpoint) == 1


# -- keep-alive ---------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving(echo) as (server, pool):
        for i in range(50):
            resp = await pool.request(server.endpoint, "POST", f"/{i}", [], b"x")
            assert await resp.read() == f"POST /{i} x".encode()
        assert server.connections == 1
        assert pool.idle_count(server.endpoint) == 1


async def test_stale_reused_connection_is_retried_transparently() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.n > 1:
            return False  # "idle timeout": close a reused connection without answering
        w.write(response(b"ok"))
        return True

    async with serving(handler) as (server, pool):
        for _ in range(3):
            resp = await pool.request(server.endpoint, "POST", "/", [], b"{}")
            assert await resp.read() == b"ok"
        assert server.connections == 3
        assert len(server.requests) == 5  # 1 + (1 lost + 1 retried) * 2


async def test_server_closing_right_after_answering_never_fails_the_next_request() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(response(b"ok"))  # keep-alive by the headers, yet closed: the pooling race
        return False

    async with serving(handler) as (server, pool):
        for _ in range(30):  # each next request races the FIN of the previous connection
            assert await (await pool.request(server.endpoint, "GET", "/", [])).read() == b"ok"
        assert server.connections == 30


async def test_retry_happens_once_then_connect_error() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if len(server.requests) > 1:
            return False
        w.write(response(b"ok"))
        return True

    async with serving(handler) as (server, pool):
        assert await (await pool.request(server.endpoint, "GET", "/", [])).read() == b"ok"
        with pytest.raises(UpstreamConnectError):
            await pool.request(server.endpoint, "GET", "/", [])
        assert server.connections == 2  # the reused one, then exactly one fresh one


async def test_fresh_connection_closed_before_head_is_a_connect_error() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        return False

    async with serving(handler) as (server, pool):
        with pytest.raises(UpstreamConnectError) as info:
            await pool.request(server.endpoint, "GET", "/", [])
        assert isinstance(info.value, NeuronUnavailable)
        assert server.connections == 1


async def test_connection_refused() -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", "/health", [])
    await pool.aclose()


async def test_connection_close_header_is_not_pooled() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(response(b"bye", extra=b"connection: close\r\n"))  # ...and keep the socket open

    async with serving(handler) as (server, pool):
        for _ in range(2):
            assert await (await pool.request(server.endpoint, "GET", "/", [])).read() == b"bye"
            assert pool.idle_count(server.endpoint) == 0
        await until(lambda: server.open == 0)  # the client closed them
        assert server.connections == 2


async def test_idle_connections_expire_and_idle_pool_is_bounded() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        w.write(response(b"ok"))

    async with Server(handler) as server:
        pool = UpstreamPool(max_idle_per_host=2, idle_timeout=0.1)
        ep = server.endpoint
        resps = await asyncio.gather(*(pool.request(ep, "GET", "/", []) for _ in range(5)))
        assert [await r.read() for r in resps] == [b"ok"] * 5
        assert pool.idle_count(ep) == 2
        await until(lambda: server.open == 2)
        await asyncio.sleep(0.15)
        assert await (await pool.request(ep, "GET", "/", [])).read() == b"ok"
        assert server.connections == 6  # both idle ones were too old
        await until(lambda: server.open == 1)
        await pool.aclose()


async def test_uvicorn_neuron_keep_alive_streaming_and_idle_close() -> None:
    clients: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        clients.append(scope["client"][1])
        body = (await receive())["body"]
        if scope["path"] == "/stream":
            head = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            for i in range(3):
                await send(
                    {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
            return
        data = json.dumps({"path": scope["path"], "len": len(body)}).encode()
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": head})
        await send({"type": "http.response.body", "body": data})

    async with uvicorn_server(app, timeout_keep_alive=0.2) as ep:
        pool = UpstreamPool()
        for i in range(20):
            resp = await pool.request(ep, "POST", f"/r{i}", [(b"x-a", b"1")], b"abc")
            assert resp.status == 201
            assert json.loads(await resp.read()) == {"path": f"/r{i}", "len": 3}
        async with await pool.request(ep, "GET", "/stream", []) as resp:
            assert b"".join([c async for c in resp]) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(set(clients)) == 1
        await asyncio.sleep(0.4)  # uvicorn closes the idle connection
        assert pool.idle_count(ep) == 0
        assert (await pool.request(ep, "GET", "/again", [])).status == 201
        assert len(set(clients)) == 2
        await pool.aclose()


class _InLoopUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any, **config: Any) -> AsyncIterator[str]:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (uvicorn's
    # own host/port binding gets it too); without it a head and a body written apart
    # meet Nagle + delayed ACK: 40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    cfg = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", **config)
    server = _InLoopUvicorn(cfg)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


# -- failures, timeouts, cancellation ------------------------------------------------------


async def test_malformed_response_and_body_cut_short() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.path == "/garbage":
            w.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
        return False

    async with serving(handler) as (server, pool):
        with pytest.raises(UpstreamProtocolError):
            await pool.request(server.endpoint, "GET", "/garbage", [])
        resp = await pool.request(server.endpoint, "GET", "/short", [])
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await resp.read()
        assert pool.idle_count(server.endpoint) == 0


async def test_slow_head_times_out_and_closes() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await wait_eof(r)
        return False

    async with serving(handler) as (server, pool):
        start = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request(server.endpoint, "GET", "/", [], timeout=0.05)
        assert time.monotonic() - start < 1
        await until(lambda: server.open == 0)  # the neuron sees the disconnect


async def test_timeout_is_per_wait_not_total() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(CHUNKED_HEAD)
        for i in range(6):
            await asyncio.sleep(0.03)
            w.write(chunk(b"%d" % i))
            await w.drain()
        if request.path == "/stall":
            await wait_eof(r)
            return False
        w.write(b"0\r\n\r\n")
        return True

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "GET", "/ok", [], timeout=0.12)
        assert await resp.read() == b"012345"  # 180 ms in all, never 120 ms idle
        resp = await pool.request(server.endpoint, "GET", "/stall", [], timeout=0.12)
        got: list[bytes] = []

        async def collect() -> None:
            async for piece in resp:
                got.append(piece)

        with pytest.raises(UpstreamTimeout):
            await collect()
        assert b"".join(got) == b"012345"
        await until(lambda: server.open == 0)
        assert pool.idle_count(server.endpoint) == 0


async def test_cancelling_a_streaming_read_closes_the_upstream_connection() -> None:
    seen_first = asyncio.Event()

    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(CHUNKED_HEAD + chunk(b"data: first\n\n"))
        await wait_eof(r)  # a generation that only ends when the client goes
        return False

    async def consume(resp: UpstreamResponse) -> None:
        async for _ in resp:
            seen_first.set()

    async with serving(handler) as (server, pool):
        resp = await pool.request(server.endpoint, "POST", "/v1/chat/completions", [])
        task = asyncio.create_task(consume(resp))
        await seen_first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.open == 0)
        assert pool.idle_count(server.endpoint) == 0


async def test_cancelling_request_and_closing_mid_body_close_the_connection() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.path == "/partial":
            w.write(CHUNKED_HEAD + chunk(b"part"))
        await wait_eof(r)
        return False

    async with serving(handler) as (server, pool):
        task = asyncio.create_task(pool.request(server.endpoint, "GET", "/hang", []))
        await until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.open == 0)
        async with await pool.request(server.endpoint, "GET", "/partial", []) as resp:
            assert await anext(aiter(resp)) == b"part"
        await until(lambda: server.open == 0)
        assert pool.idle_count(server.endpoint) == 0


async def test_aclose_pools_a_complete_unread_response() -> None:
    async with serving(echo) as (server, pool):
        resp = await pool.request(server.endpoint, "GET", "/", [])
        conn = resp._conn
        assert conn is not None
        await until(lambda: conn.done)
        await resp.aclose()
        assert pool.idle_count(server.endpoint) == 1


async def test_pool_aclose_closes_busy_and_idle_connections() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.path == "/stream":
            w.write(CHUNKED_HEAD + chunk(b"x"))
            await wait_eof(r)
            return False
        w.write(response(b"ok"))
        return True

    async with Server(handler) as server:
        pool = UpstreamPool()
        resp = await pool.request(server.endpoint, "GET", "/stream", [])
        assert await (await pool.request(server.endpoint, "GET", "/", [])).read() == b"ok"
        assert (server.open, pool.idle_count(server.endpoint)) == (2, 1)
        await pool.aclose()
        await until(lambda: server.open == 0)
        with pytest.raises(UpstreamError):
            await resp.read()
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request(server.endpoint, "GET", "/", [])


def test_bad_endpoint() -> None:
    pool = UpstreamPool()
    with pytest.raises(ValueError, match=r"http\(s\)://"):  # https:// is TLS (test_tls.py)
        asyncio.run(pool.request("ftp://x:1", "GET", "/", []))


# -- load and leaks -------------------------------------------------------------------------


async def test_many_concurrent_requests_over_64_connections() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(random.random() / 500)
        w.write(response(request.body[::-1]))

    async with serving(handler) as (server, pool):
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> bytes:
            async with gate:
                resp = await pool.request(server.endpoint, "POST", "/", [], f"req-{i}".encode())
                return await resp.read()

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results == [f"req-{i}".encode()[::-1] for i in range(200)]
        assert server.connections <= 64
        assert pool.idle_count(server.endpoint) == server.connections


def _census() -> tuple[int, int, int]:
    """Live client connections, open transports, pending bare futures (one heap scan)."""
    gc.collect()
    conns = transports = futures = 0
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: some foreign objects hook __class__
        if kind is Connection:
            conns += 1
        elif issubclass(kind, asyncio.BaseTransport):
            transports += not obj.is_closing()
        elif kind is asyncio.Future:
            futures += not obj.done()
    return conns, transports, futures


async def test_no_leaks_after_thousands_of_requests_some_aborted() -> None:
    async def handler(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.path == "/hang":
            await wait_eof(r)
            return False
        if request.path == "/stream":
            w.write(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
            await wait_eof(r)
            return False
        w.write(response(b"ok"))
        return True

    tasks_before = asyncio.all_tasks()
    async with Server(handler) as server:
        pool = UpstreamPool()
        ep = server.endpoint
        aborted = 0

        async def worker(w: int) -> None:
            nonlocal aborted
            for i in range(100):
                kind = (w + i) % 20
                if kind > 1:
                    assert await (await pool.request(ep, "GET", "/", [])).read() == b"ok"
                    continue
                # asyncio.timeout cancels the task: while it waits for the head (kind 0)
                # or while it iterates over a stream that never ends (kind 1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.02):
                        resp = await pool.request(
                            ep, "GET", "/hang" if kind == 0 else "/stream", []
                        )
                        async for _ in resp:
                            pass
                aborted += 1

        await asyncio.gather(*(worker(w) for w in range(30)))
        assert aborted == 300
        idle = pool.idle_count(ep)
        assert 1 <= idle <= 30
        await until(lambda: server.open == idle)
        # the idle connections' two ends; the only pending futures are the server's (its
        # stream reader's waiter and "closed" future per connection)
        assert _census() == (idle, 2 * idle, 2 * idle)
        assert len(pool._conns) == idle
        handler_tasks = asyncio.all_tasks() - tasks_before
        assert len(handler_tasks) == idle  # no task of the client's own
        await pool.aclose()
        await until(lambda: server.open == 0)
    assert _census() == (0, 0, 0)
    assert asyncio.all_tasks() == tasks_before


# -- the same scenarios under uvloop ----------------------------------------------------------

UVLOOP_SCENARIOS = [
    test_content_length_body_and_request_framing,
    test_chunked_body,
    test_body_ended_by_connection_close,
    test_sse_events_arrive_one_by_one_without_buffering,
    test_back_pressure_pauses_reading_then_drains,
    test_stale_reused_connection_is_retried_transparently,
    test_server_closing_right_after_answering_never_fails_the_next_request,
    test_connection_refused,
    test_slow_head_times_out_and_closes,
    test_cancelling_a_streaming_read_closes_the_upstream_connection,
    test_many_concurrent_requests_over_64_connections,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda f: f.__name__[5:])
def test_under_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await scenario()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
