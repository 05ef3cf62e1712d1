"""One keep-alive HTTP/1.1 connection from the gateway to a neuron, and its errors.

``Connection`` is the asyncio protocol and the httptools parser's callback target: it holds
the state of the response in flight, which ``cortex.gateway.upstream`` (the pool and
``UpstreamResponse``) reads and waits on. See that module for the contracts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools

from cortex.errors import NeuronUnavailable, UpstreamTimeout

if TYPE_CHECKING:
    from cortex.gateway.upstream import UpstreamPool

_HIGH_WATER = 1 << 20  # pause reading the socket above this many buffered body bytes
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class UpstreamError(NeuronUnavailable):
    """A connection-level failure talking to a neuron."""


class UpstreamConnectError(UpstreamError):
    """Could not connect, or the connection died before the response head: retryable."""


class UpstreamProtocolError(UpstreamError):
    """A malformed response, or the connection was lost in the middle of the body."""


class Stale(Exception):
    """A reused idle connection died before any response byte: resend on a fresh one."""


def _expire(fut: asyncio.Future[None], where: str, limit: float) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"{where} sent nothing for {limit:g} s"))


class Host:
    __slots__ = ("addr", "endpoint", "host", "idle", "port", "ssl")

    def __init__(self, endpoint: str, context: ssl.SSLContext | None = None) -> None:
        """``context``: TLS for an https:// endpoint (default: the system's CAs)."""
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"upstream endpoint must be http(s)://host[:port], got {endpoint!r}")
        self.endpoint = endpoint
        self.host = url.hostname
        https = url.scheme == "https"
        self.port = url.port or (443 if https else 80)
        self.ssl = (context or ssl.create_default_context()) if https else None
        self.addr = url.netloc.rpartition("@")[2].encode("ascii")
        self.idle: deque[Connection] = deque()


class Connection(asyncio.Protocol):
    """One TCP connection; also the parser's callback target. State of the current response."""

    # fmt: off
    __slots__ = (
        "active", "buf", "buffered", "closed", "done", "error", "got_bytes", "head_done",
        "headers", "host", "idle_since", "keep_alive", "loop", "parser", "paused", "pool",
        "reused", "status", "transport", "waiter",
    )
    # fmt: on

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.host = host
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.active = self.closed = self.paused = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.begin(False)

    def begin(self, reused: bool) -> None:
        self.reused = reused
        self.got_bytes = self.head_done = self.done = self.keep_alive = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.buf: list[bytes] = []
        self.buffered = 0
        self.error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pool.track(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes on an idle connection: nothing may be trusted on it
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except _PARSE_ERRORS as exc:
            if self.error is None:
                self.error = UpstreamProtocolError(f"bad response from {self.host.endpoint}: {exc}")
            self.abort()
            self.wake()
            return
        if self.buffered > _HIGH_WATER and not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.closed = True  # never hand it out again; connection_lost follows
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.untrack(self)
        if not self.active:
            with contextlib.suppress(ValueError):
                self.host.idle.remove(self)
            return
        if self.done or self.error is not None:
            self.wake()
            return
        where = self.host.endpoint
        if not self.head_done:
            stale = self.reused and not self.got_bytes
            self.error = (
                Stale() if stale else UpstreamConnectError(f"{where} closed before answering")
            )
        elif exc is None and not any(
            n == b"content-length" or n == b"transfer-encoding" for n, _ in self.headers
        ):
            self.done = True  # a body delimited by the connection's end
        else:
            self.error = UpstreamProtocolError(f"{where} closed the connection mid-response")
        self.wake()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.head_done:
            raise UpstreamProtocolError("unexpected second response")
        self.head_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.wake()

    def on_body(self, body: bytes) -> None:
        self.buf.append(body)
        self.buffered += len(body)
        self.wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, limit: float | None) -> None:
        fut = self.loop.create_future()
        self.waiter = fut
        if limit is None:
            await fut
            return
        timer = self.loop.call_later(limit, _expire, fut, self.host.endpoint, limit)
        try:
            await fut
        finally:
            timer.cancel()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self.transport.close()
