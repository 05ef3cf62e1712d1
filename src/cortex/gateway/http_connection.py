"""One client connection of the gateway's HTTP server (``cortex.gateway.http``, which states
the contracts): httptools parses, requests queue and run one at a time, errors wait their
turn, and one timer per connection enforces the deadlines of ``http_limits``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import deque
from typing import TYPE_CHECKING, NoReturn, cast

import httptools

from cortex.errors import (
    CortexError,
    HeadTooLarge,
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    UriTooLong,
)
from cortex.gateway.http_limits import Phase
from cortex.gateway.http_message import HttpRequest, Responder, closing_response

if TYPE_CHECKING:
    from cortex.gateway.http import HttpServer

__all__ = ["HttpConnection"]

log = logging.getLogger("cortex.gateway.http")

MAX_PIPELINE = 8  # requests parsed ahead of the one being answered before reading pauses

_IDLE, _HEAD, _BODY = Phase  # globals: reading an enum member off its class costs ~70 ns (3.11)


class HttpConnection(asyncio.Protocol):
    """One client connection: parses its requests, runs them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request: HttpRequest | None = None
        self._url = b""  # the request target, gathered: httptools hands it over in pieces
        self._size = 0  # body bytes of the request being read
        # Byte offsets into all that was fed, for the head limit without a cost per header:
        self._fed = 0  # up to the end of the read being parsed
        self._read_start = 0  # up to its start
        self._begin = 0  # ≤ where the request being read began: the start of its first read
        self._progress = 0  # ≥ where the parser last finished something: the end of that read
        self._phase: Phase = _IDLE
        self._now = 0.0  # loop time of the read being parsed
        self._deadline = math.inf  # when the current phase runs out (see http_limits)
        self._timer: asyncio.TimerHandle | None = None
        self._queue: deque[HttpRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._responder: Responder | None = None
        self._paused_reading = False
        self._write_ready: asyncio.Future[None] | None = None
        self._closing = False
        self._refusal: CortexError | None = None  # what a parser callback raised
        self._error: CortexError | None = None  # owed once the requests before it are answered
        self._error_path = ""
        self._lingering = False  # the error is sent; what still comes is drained, then close
        self._linger_until = 0.0
        self._continue_owed = False

    # --- transport events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server: a stream transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        now = self._loop.time()
        self._deadline = now + self._limits.keep_alive
        self._timer = self._loop.call_later(self._limits.tick, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:  # after a refusal what still comes is dropped, not parsed
            if self._lingering:
                quiet = self._loop.time() + self._limits.linger
                self._deadline = min(quiet, self._linger_until)
            return
        self._now = now = self._loop.time()
        if self._phase is _BODY:
            self._deadline = now + self._limits.body_timeout
        self._read_start = fed = self._fed
        self._fed = fed + len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidRequest("Connection upgrades are not supported"))
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; the callback kept the real reason.
            self._fail(self._refusal or InvalidRequest(f"Malformed HTTP request: {exc}"))
        else:
            # httptools holds a header's pieces until the header ends: stop feeding it one
            # read past the limit, so a flood of header bytes is never held. (The reads
            # since the last progress hold nothing else: a lower bound, never a false 431.)
            limits = self._limits
            if self._fed - self._progress > limits.max_header_bytes or (
                self._phase is _HEAD
                and self._request is not None
                and len(self._request.headers) > limits.max_headers
            ):
                self._fail(self._head_too_large())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
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
        self._begin = self._read_start
        self._phase = _HEAD
        self._deadline = self._now + self._limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_header_bytes:
            limit = self._limits.max_header_bytes
            self._refuse(UriTooLong(f"The request target is over the {limit}-byte limit"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._request is not None:  # limits: after each read and at the head's end
            self._request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._request
        if request is None:
            return
        limits = self._limits
        if self._fed - self._begin > limits.max_header_bytes or (
            len(request.headers) > limits.max_headers
        ):  # the head may be over a limit: count it
            self._check_head(request)
        self._phase = _BODY
        self._deadline = self._now + limits.body_timeout
        self._progress = self._fed
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(InvalidRequest("Malformed request target"))
        request.path = url.path.decode("latin-1")
        request.query = url.query or b""
        request.method = self._parser.get_method().decode("latin-1")
        request.keep_alive = self._parser.should_keep_alive()
        if self._parser.should_upgrade():  # refused before it queues: after it, another protocol
            self._refuse(InvalidRequest("Connection upgrades are not supported"))
        request.http_version = self._parser.get_http_version()
        declared = request.header(b"content-length")
        limit = self._limits.max_body
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._refuse(
                RequestTooLarge(
                    f"Request body of {int(declared)} bytes is over the {limit}-byte limit"
                )
            )
        expect = request.header(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and request.http_version != "1.0"
        ):
            if self._task is None and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:  # never inside another response: sent when this request's turn comes
                self._continue_owed = True

    def on_body(self, body: bytes) -> None:
        if self._request is not None:
            self._progress = self._fed
            self._size += len(body)
            if self._size > self._limits.max_body:
                limit = self._limits.max_body
                self._refuse(RequestTooLarge(f"Request body is over the {limit}-byte limit"))
            self._request._chunks.append(body)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        self._phase = _IDLE
        self._url = b""
        self._progress = self._fed
        self._continue_owed = False  # the body came without it
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
        responder = Responder(
            self, request.keep_alive, request.method == "HEAD", request.http_version == "1.0"
        )
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
            and self._error is None
            and self._transport is not None
        ):
            self._transport.resume_reading()
            self._paused_reading = False
        if self._queue:
            self._next()
        elif self._error is not None:
            self._send_error()  # the requests before the bad one are all answered
        else:
            # The request being read (if any) is now the current one: its clock starts.
            limits, phase = self._limits, self._phase
            timeout = limits.keep_alive if phase is _IDLE else limits.timeout(phase)
            self._deadline = self._loop.time() + timeout
            if self._continue_owed and self._transport is not None:
                self._continue_owed = False
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

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

    def _refuse(self, error: CortexError) -> NoReturn:
        self._refusal = error
        raise error  # stops the parser; data_received answers with the kept error

    def _fail(self, error: CortexError) -> None:
        """Read no more; answer ``error`` after the requests before it, then close."""
        if self._error is not None or self._transport is None or self._closing:
            return
        self._error = error
        self._continue_owed = False
        request = self._request
        self._error_path = (
            request.path
            if request is not None and request.path
            else self._url.partition(b"?")[0].decode("latin-1")
        )
        # Nothing more is parsed: let go of the refused request and of what httptools held
        # of it (up to a read past the head limit) while the error waits and lingers.
        self._request, self._url = None, b""
        self._parser = httptools.HttpRequestParser(self)
        if self._task is None:
            self._send_error()
        elif not self._paused_reading:  # hold the client off until its turn
            self._transport.pause_reading()
            self._paused_reading = True

    def _send_error(self) -> None:
        transport, error = self._transport, self._error
        if transport is None or error is None or self._closing:
            return
        kind, body = self._server.on_error(self._error_path, error)
        transport.write(closing_response(error.status, kind, body))
        if not transport.can_write_eof():
            transport.close()
            return
        # Half-close and drain: closing with unread bytes would reset the connection and
        # could destroy the error before the client reads it. The drain ends at the client's
        # close, after ``linger`` quiet seconds, or after ``linger_max`` in all.
        transport.write_eof()
        if self._paused_reading:
            transport.resume_reading()
            self._paused_reading = False
        now = self._loop.time()
        self._lingering = True
        self._linger_until = now + self._limits.linger_max
        self._deadline = now + self._limits.linger
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._limits.linger, self._on_timer)

    def _check_head(self, request: HttpRequest) -> None:
        size = len(self._url) + sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size > self._limits.max_header_bytes or len(request.headers) > self._limits.max_headers:
            self._refuse(self._head_too_large())

    def _head_too_large(self) -> HeadTooLarge:
        limits = self._limits
        return HeadTooLarge(
            f"The request head is over {limits.max_header_bytes} bytes"
            f" or {limits.max_headers} headers"
        )

    def _on_timer(self) -> None:
        """Wakes every ``tick`` or at the deadline, whichever is sooner (see http_limits)."""
        now = self._loop.time()
        wait = self._limits.tick
        if self._task is None and (self._error is None or self._lingering):
            left = self._deadline - now
            if left <= 0.001:
                self._expire()
                return
            wait = min(wait, left)
        self._timer = self._loop.call_later(wait, self._on_timer)

    def _expire(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is _IDLE or self._lingering:
            self.close()
        elif phase is _HEAD:
            took = self._limits.header_timeout
            self._fail(RequestTimeout(f"The request head took over {took:g}s"))
        else:
            quiet = self._limits.body_timeout
            self._fail(RequestTimeout(f"No request body bytes for {quiet:g}s"))
