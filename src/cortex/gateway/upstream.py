"""A minimal HTTP/1.1 client from the gateway to neurons: the data plane's hot path.

One ``UpstreamPool`` per gateway process, used from one event loop (asyncio or uvloop).
It speaks just enough HTTP/1.1 for neurons: one request per connection at a time, no
pipelining, no request streaming, no redirects, no 1xx, no HEAD. An ``https://`` endpoint
is reached over TLS with the context the pool was given for it (``tls``), built once.

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
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType

from cortex.gateway.upstream_conn import (
    Connection,
    Host,
    Stale,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
)

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
]

_SKIP = frozenset({b"host", b"content-length", b"transfer-encoding"})


class UpstreamResponse:
    """A response whose head has arrived; the body is read with ``read()`` or ``async for``."""

    __slots__ = ("_conn", "_timeout", "headers", "status")

    def __init__(self, conn: Connection, timeout: float | None) -> None:
        self._conn: Connection | None = conn
        self._timeout = timeout
        self.status: int = conn.status
        self.headers: list[tuple[bytes, bytes]] = conn.headers

    @property
    def is_event_stream(self) -> bool:
        return (self.header(b"content-type") or b"").startswith(b"text/event-stream")

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

    # fmt: off
    __slots__ = (
        "_closed", "_connect_timeout", "_conns", "_hosts", "_idle_timeout", "_max_idle", "_tls",
    )
    # fmt: on

    def __init__(
        self,
        *,
        max_idle_per_host: int = 256,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        """``tls``: endpoint → the context for that https:// endpoint (``cortex.tls``)."""
        self._tls = tls or {}
        self._max_idle = max_idle_per_host
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._hosts: dict[str, Host] = {}
        self._conns: set[Connection] = set()
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
            host = self._hosts[endpoint] = Host(endpoint, self._tls.get(endpoint))
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
            except Stale:
                pass
        return await self._send(await self._connect(host), data, timeout, False)

    async def _send(
        self, conn: Connection, data: bytes, limit: float | None, reused: bool
    ) -> UpstreamResponse:
        conn.begin(reused)
        conn.active = True
        try:
            conn.transport.write(data)
        except Exception as exc:  # uvloop raises on a transport closed under our feet
            conn.abort()
            if reused:
                raise Stale from exc
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

    async def _connect(self, host: Host) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, host, loop),
                    host.host,
                    host.port,
                    ssl=host.ssl,
                    server_hostname=host.host if host.ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamConnectError(f"connecting to {host.endpoint} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {host.endpoint}: {exc}") from exc
        return conn

    def _pop_idle(self, host: Host) -> Connection | None:
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

    def track(self, conn: Connection) -> None:
        """A connection is made: it is closed with the pool."""
        self._conns.add(conn)

    def untrack(self, conn: Connection) -> None:
        self._conns.discard(conn)

    def _release(self, conn: Connection) -> None:
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
