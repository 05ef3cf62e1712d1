"""The gateway's HTTP/1.1 server: asyncio Protocol + httptools, one write per response.

Why not uvicorn here: the gateway sits on every request's path. ASGI costs a scope
dict, message dicts, a header-validation regex per header and two writes per
response, and learning of a client disconnect needs a task per request. This server
hands each request to a handler with a ``Responder`` that writes a whole response in
one ``transport.write`` and cancels the handler's task the moment its client goes.

Contracts:

* Requests on one connection are handled one at a time, in order (pipelining is
  queued, reading pauses while the queue is long).
* ``Responder.disconnected`` is set before the handler's task is cancelled because
  the client went away; any other cancellation is a shutdown.
* A body over ``max_body`` is refused with 413 (through ``on_error``) and the
  connection closed; a request that does not parse gets 400 and a close.
* Idle keep-alive connections close after ``keep_alive`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from cortex.errors import CortexError, InvalidRequest, RequestTooLarge
from cortex.gateway.http_message import HttpRequest, Responder, status_line

__all__ = ["HttpRequest", "HttpServer", "Responder"]

log = logging.getLogger(__name__)

MAX_PIPELINE = 8

Handler = Callable[[HttpRequest, Responder], Awaitable[None]]
ErrorBody = Callable[[str, CortexError], tuple[bytes, bytes]]  # (path, error) → (type, body)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request: HttpRequest | None = None
        self._size = 0
        self._queue: deque[HttpRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._responder: Responder | None = None
        self._paused_reading = False
        self._write_ready: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._refusal: CortexError | None = None

    # --- transport events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server: a stream transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidRequest("Connection upgrades are not supported"))
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; the callback kept the real reason.
            self._fail(self._refusal or InvalidRequest(f"Malformed HTTP request: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.forget(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._responder is not None and not self._responder.finished:
            self._responder.disconnected = True
            if self._task is not None:
                self._task.cancel()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    # --- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = HttpRequest(method="", path="", query=b"", headers=[])
        self._size = 0

    def on_url(self, url: bytes) -> None:
        if self._request is not None:
            parsed = httptools.parse_url(url)
            self._request.path = parsed.path.decode("latin-1")
            self._request.query = parsed.query or b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._request is not None:
            self._request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._request
        if request is None:
            return
        request.method = self._parser.get_method().decode("latin-1")
        request.keep_alive = self._parser.should_keep_alive()
        request.http_version = self._parser.get_http_version()
        declared = request.header(b"content-length")
        limit = self._server.max_body
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._refuse(
                RequestTooLarge(
                    f"Request body of {int(declared)} bytes is over the {limit}-byte limit"
                )
            )
        if request.header(b"expect") == b"100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._request is not None:
            self._size += len(body)
            if self._size > self._server.max_body:
                limit = self._server.max_body
                self._refuse(RequestTooLarge(f"Request body is over the {limit}-byte limit"))
            self._request._chunks.append(body)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        request.body = b"".join(request._chunks)
        request._chunks = []
        self._queue.append(request)
        if len(self._queue) > MAX_PIPELINE and self._transport is not None:
            self._transport.pause_reading()
            self._paused_reading = True
        if self._task is None:
            self._next()

    # --- serving ---------------------------------------------------------------------------

    def _next(self) -> None:
        if not self._queue or self._closing:
            return
        request = self._queue.popleft()
        responder = Responder(self, request.keep_alive, request.method == "HEAD")
        self._responder = responder
        self._task = self._loop.create_task(self._run(request, responder))

    async def _run(self, request: HttpRequest, responder: Responder) -> None:
        try:
            await self._server.handler(request, responder)
        except asyncio.CancelledError:
            if not responder.disconnected:
                raise
        except Exception:  # a bug must cost one request, not the connection's others
            log.exception("unhandled error on %s %s", request.method, request.path)
            if not responder.started:
                kind, body = self._server.on_error(request.path, CortexError("Internal error"))
                responder.respond(500, body, kind)
            elif self._transport is not None:
                self._transport.close()
        finally:
            if (
                not responder.finished
                and not responder.disconnected
                and self._transport is not None
            ):
                self._transport.close()  # a handler that never finished its response

    def response_done(self, keep_alive: bool) -> None:
        self._task = None
        self._responder = None
        if not keep_alive or self._server.stopping:
            self._server.check_drained()
            if self._transport is not None:
                self._transport.close()
            return
        if (
            self._paused_reading
            and len(self._queue) <= MAX_PIPELINE
            and self._transport is not None
        ):
            self._transport.resume_reading()
            self._paused_reading = False
        if self._queue:
            self._next()
        else:
            self._arm_idle()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(data)

    async def drain(self) -> None:
        if self._write_ready is not None:
            await self._write_ready

    @property
    def idle(self) -> bool:
        return self._task is None and not self._queue

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _refuse(self, error: CortexError) -> None:
        self._refusal = error
        raise error  # stops the parser; data_received answers with the kept error

    def _fail(self, error: CortexError) -> None:
        if self._transport is None:
            return
        path = self._request.path if self._request is not None else ""
        if self._responder is None or not self._responder.started:
            kind, body = self._server.on_error(path, error)
            self._transport.write(
                status_line(error.status) + b"content-type: " + kind + b"\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )  # fmt: skip
        self._transport.close()

    def _arm_idle(self) -> None:
        self._idle = self._loop.call_later(self._server.keep_alive, self.close)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        on_error: ErrorBody,
        *,
        max_body: int,
        keep_alive: float = 75.0,
    ) -> None:
        self.handler = handler
        self.on_error = on_error
        self.max_body = max_body
        self.keep_alive = keep_alive
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._drained = asyncio.Event()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=2048)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self.check_drained()

    def check_drained(self) -> None:
        if self.stopping and all(c.idle for c in self.connections):
            self._drained.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace``), close the rest."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        self.check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            log.warning("closing %d connections with requests in flight", len(self.connections))
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
