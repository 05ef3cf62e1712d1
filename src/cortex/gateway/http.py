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
* A body over ``max_body`` is refused with 413 (through ``on_error``); a head over
  ``max_header_bytes`` or ``max_headers`` with 431 (414 for the target alone); a request
  that does not parse with 400. Such an error waits for the responses before it, is sent,
  and the connection is half-closed and drained for a moment, then closed. Nothing past
  the limits is buffered: httptools is fed at most a read or two past them.
* A head not complete ``header_timeout`` after its first byte, or a body with no bytes
  for ``body_timeout``, gets 408 and a close; an idle keep-alive connection closes after
  ``keep_alive``. One ``call_later`` timer per connection enforces all three (see
  ``http_limits``), so a request costs no timer of its own.
* ``100 Continue`` goes out only when its request is the one being read and nothing is
  being answered, so it never lands inside another response.
* HTTP/1.0: a streamed response is close-delimited (no chunked framing), and without
  ``Connection: keep-alive`` the connection closes after each response.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from cortex.errors import CortexError
from cortex.gateway.http_connection import HttpConnection
from cortex.gateway.http_limits import Limits
from cortex.gateway.http_message import HttpRequest, Responder

__all__ = ["HttpRequest", "HttpServer", "Responder"]

log = logging.getLogger(__name__)

Handler = Callable[[HttpRequest, Responder], Awaitable[None]]
ErrorBody = Callable[[str, CortexError], tuple[bytes, bytes]]  # (path, error) → (type, body)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        on_error: ErrorBody,
        *,
        max_body: int,
        keep_alive: float = 75.0,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
    ) -> None:
        self.handler = handler
        self.on_error = on_error
        self.limits = Limits(
            max_body=max_body,
            keep_alive=keep_alive,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
        )
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._drained = asyncio.Event()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen; with ``tls``, HTTPS (asyncio's TLS transport under the same protocol, a
        handshake bounded by ``header_timeout``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            backlog=2048,
            ssl=tls,
            ssl_handshake_timeout=self.limits.header_timeout if tls is not None else None,
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    def forget(self, conn: HttpConnection) -> None:
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
