"""A minimal HTTP/1.1 client from the gateway to neurons: the data plane's hot path.

One ``UpstreamPool`` per gateway process, used from one event loop (asyncio or uvloop).
It speaks just enough HTTP/1.1 for neurons: one request per connection at a time, no
pipelining, no request streaming, no TLS, no redirects, no 1xx, no HEAD.

Contracts:

* ``request()`` writes the whole request with one ``transport.write`` (``Host``, the
  caller's headers, ``Content-Length``, body) and returns once the response *head* has
  arrived. Callers pass valid header names/values (no CR/LF); ``Host``,
  ``Content-Length`` and ``Transfer-Encoding`` given by the caller are dropped.
* It blocks (awaits) only on: connecting (bounded by ``connect_timeout``, failures raise
  ``UpstreamConnectError``), the response head, and then each body read, each bounded by
  ``timeout`` as an *idle* timeout (not a total): ``UpstreamTimeout``.
* A connection taken from the idle pool may have been closed by the server meanwhile
  (that race is inherent to keep-alive). If it dies before any response byte the request
  is sent again, once, on a fresh connection; a fresh connection that fails raises
  ``UpstreamConnectError`` (nothing was answered: safe to try another node). Losing the
  connection after the head, or a malformed response, raises ``UpstreamProtocolError``.
* Body bytes are handed over as they arrive: each ``async for`` step yields everything
  buffered so far, de-chunked. Reading from the socket pauses above ~1 MiB buffered and
  resumes when the reader drains it.
* The connection is returned to the LIFO idle pool only when the whole response has been
  received on a keep-alive connection: automatically once ``read()``/iteration reaches
  the end, or at ``aclose()``. Any other end closes it: an exception, a timeout, an
  ``aclose()`` mid-body, or *cancellation* of the awaiting task at any await point (this
  is how a client disconnect aborts the neuron's generation). Callers must end every
  response (read it to the end, ``aclose()`` it, or use ``async with``).
* No tasks are created per request; each wait is one future (plus one timer handle when
  a timeout is given). Idle connections older than ``idle_timeout`` are closed lazily
  when the pool is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

from cortex.errors import NeuronUnavailable, UpstreamTimeout

_HIGH_WATER = 1 << 20  # pause reading the socket above this many buffered body bytes
_SKIP = frozenset({b"host", b"content-length", b"transfer-encoding"})
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class UpstreamError(NeuronUnavailable):
    """A connection-level failure talking to a neuron."""


class UpstreamConnectError(UpstreamError):
    """Could not connect, or the connection died before the response head: retryable."""


class UpstreamProtocolError(UpstreamError):
    """A malformed response, or the connection was lost in the middle of the body."""


class _Stale(Exception):
    """A reused idle connection died before any response byte: resend on a fresh one."""


def _expire(fut: asyncio.Future[None], where: str, limit: float) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"{where} sent nothing for {limit:g} s"))


class _Host:
    __slots__ = ("addr", "endpoint", "host", "idle", "port")

    def __init__(self, endpoint: str) -> None:
        url = urlsplit(endpoint)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream endpoint must be http://host[:port], got {endpoint!r}")
        self.endpoint = endpoint
        self.host = url.hostname
        self.port = url.port or 80
        self.addr = url.netloc.rpartition("@")[2].encode("ascii")
        self.idle: deque[_Conn] = deque()


class _Conn(asyncio.Protocol):
    """One TCP connection; also the parser's callback target. State of the current response."""

    # fmt: off
    __slots__ = (
        "active", "buf", "buffered", "closed", "done", "error", "got_bytes", "head_done",
        "headers", "host", "idle_since", "keep_alive", "loop", "parser", "paused", "pool",
        "reused", "status", "transport", "waiter",
    )
    # fmt: on

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, host: _Host, loop: asyncio.AbstractEventLoop) -> None:
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
        self.pool._conns.add(self)
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
        self.pool._conns.discard(self)
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
                _Stale() if stale else UpstreamConnectError(f"{where} closed before answering")
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


class UpstreamResponse:
    """A response whose head has arrived; the body is read with ``read()`` or ``async for``."""

    __slots__ = ("_conn", "_timeout", "headers", "status")

    def __init__(self, conn: _Conn, timeout: float | None) -> None:
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self.status: int = conn.status
        self.headers: list[tuple[bytes, bytes]] = conn.headers

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def _next(self) -> bytes | None:
        """What has arrived since the last call; None at the end (the connection is released)."""
        conn = self._conn
        if conn is None:
            return None
        while True:
            buf = conn.buf
            if buf:
                conn.buf = []
                conn.buffered = 0
                if conn.paused and not conn.closed:
                    conn.paused = False
                    conn.transport.resume_reading()
                if conn.done:
                    self._conn = None
                    conn.pool._release(conn)
                return buf[0] if len(buf) == 1 else b"".join(buf)
            if conn.done:
                self._conn = None
                conn.pool._release(conn)
                return None
            error = conn.error
            if error is not None:
                self._conn = None
                conn.abort()
                raise error
            try:
                await conn.wait(self._timeout)
            except BaseException:
                self._conn = None
                conn.abort()
                raise

    async def read(self) -> bytes:
        """The whole (de-chunked) body."""
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Pool the connection if the response is complete, else close it (aborts the neuron)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.done:
                conn.pool._release(conn)
            else:
                conn.abort()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:  # a response dropped unfinished must not pin its connection
        conn = self._conn
        if conn is not None:
            self._conn = None
            with contextlib.suppress(Exception):  # the loop may be closed already
                conn.abort()


class UpstreamPool:
    """Keep-alive connections to neurons, per endpoint (``http://host:port``)."""

    __slots__ = ("_closed", "_connect_timeout", "_conns", "_hosts", "_idle_timeout", "_max_idle")

    def __init__(
        self,
        *,
        max_idle_per_host: int = 256,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
    ) -> None:
        self._max_idle = max_idle_per_host
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._hosts: dict[str, _Host] = {}
        self._conns: set[_Conn] = set()
        self._closed = False

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the response head has arrived (see module doc)."""
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        host = self._hosts.get(endpoint)
        if host is None:
            host = self._hosts[endpoint] = _Host(endpoint)
        parts = [f"{method} {path} HTTP/1.1\r\nHost: ".encode("latin-1"), host.addr, b"\r\n"]
        for name, value in headers:
            if name.lower() not in _SKIP:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
        data = b"".join(parts)
        conn = self._pop_idle(host)
        if conn is not None:
            try:
                return await self._send(conn, data, timeout, True)
            except _Stale:
                pass
        return await self._send(await self._connect(host), data, timeout, False)

    async def _send(
        self, conn: _Conn, data: bytes, limit: float | None, reused: bool
    ) -> UpstreamResponse:
        conn.begin(reused)
        conn.active = True
        try:
            conn.transport.write(data)
        except Exception as exc:  # uvloop raises on a transport closed under our feet
            conn.abort()
            if reused:
                raise _Stale from exc
            raise UpstreamConnectError(f"cannot write to {conn.host.endpoint}: {exc}") from exc
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(limit)
        except BaseException:
            conn.abort()
            raise
        return UpstreamResponse(conn, limit)

    async def _connect(self, host: _Host) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, host, loop), host.host, host.port
                )
        except TimeoutError:
            raise UpstreamConnectError(f"connecting to {host.endpoint} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {host.endpoint}: {exc}") from exc
        return conn

    def _pop_idle(self, host: _Host) -> _Conn | None:
        idle = host.idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self._idle_timeout:
                conn.close()  # the newest is too old, so are all below it
                continue
            return conn
        return None

    def _release(self, conn: _Conn) -> None:
        conn.active = False
        conn.buf = []
        conn.buffered = 0
        idle = conn.host.idle
        if conn.closed or not conn.keep_alive or self._closed or len(idle) >= self._max_idle:
            conn.close()
            return
        if conn.paused:
            conn.paused = False
            conn.transport.resume_reading()
        now = time.monotonic()
        conn.idle_since = now
        idle.append(conn)
        while now - idle[0].idle_since > self._idle_timeout:
            idle.popleft().close()

    def idle_count(self, endpoint: str) -> int:
        """Idle pooled connections to ``endpoint`` (for tests and metrics)."""
        host = self._hosts.get(endpoint)
        return 0 if host is None else sum(1 for conn in host.idle if not conn.closed)

    async def aclose(self) -> None:
        """Close every connection, idle or busy; later requests raise ``UpstreamError``."""
        self._closed = True
        for host in self._hosts.values():
            host.idle.clear()
        for conn in list(self._conns):
            conn.abort()
        for _ in range(100):  # let connection_lost callbacks run
            if not self._conns:
                break
            await asyncio.sleep(0)
