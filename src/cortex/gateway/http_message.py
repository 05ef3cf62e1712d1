"""What a gateway handler gets: the parsed ``HttpRequest``, and a ``Responder`` that writes
its one response (whole, or streamed chunked) in as few ``transport.write`` calls as it can.
``cortex.gateway.http`` (the server) makes both; see it for the contracts.

An HTTP/1.0 client cannot read chunked framing: a response streamed to one is sent bare,
with ``connection: close``, and its end is the connection's close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Wire(Protocol):
    """The connection a ``Responder`` writes to."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def response_done(self, keep_alive: bool) -> None: ...


_REASONS = {
    200: b"OK", 204: b"No Content", 304: b"Not Modified", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    413: b"Payload Too Large", 414: b"URI Too Long", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 499: b"Client Closed Request",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 507: b"Insufficient Storage", 529: b"Overloaded",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _REASONS.get(status, b"Status")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return line


def closing_response(status: int, content_type: bytes, body: bytes) -> bytes:
    """A whole response after which the server closes (its own errors: 400, 408, 413, 431)."""
    return (
        status_line(status) + b"content-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )  # fmt: skip


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes = b""
    keep_alive: bool = True
    http_version: str = "1.1"
    _chunks: list[bytes] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Responder:
    """Writes one response. ``respond`` for a whole body; ``start``/``write``/``end`` to stream."""

    __slots__ = (
        "_conn",
        "_head_only",
        "_http10",
        "_keep_alive",
        "disconnected",
        "finished",
        "started",
        "status",
    )

    def __init__(self, conn: Wire, keep_alive: bool, head_only: bool, http10: bool = False) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self._head_only = head_only
        self._http10 = http10
        self.started = False
        self.finished = False
        self.disconnected = False
        self.status = 0

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        if self.started or self.disconnected:
            return
        self.started = self.finished = True
        self.status = status
        parts = [status_line(status), b"content-type: ", content_type, b"\r\ncontent-length: ",
                 str(len(body)).encode(), b"\r\n"]  # fmt: skip
        for name, value in headers or ():
            parts += (name, b": ", value, b"\r\n")
        if not self._keep_alive:
            parts.append(b"connection: close\r\n")
        elif self._http10:  # HTTP/1.0 closes unless told otherwise
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not self._head_only:
            parts.append(body)
        self._conn.write(b"".join(parts))
        self._conn.response_done(self._keep_alive)

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the head of a streamed response: chunked, or close-delimited to HTTP/1.0."""
        if self.started or self.disconnected:
            return
        self.started = True
        self.status = status
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if self._http10:
            self._keep_alive = False
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self._keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._conn.write(b"".join(parts))

    async def write(self, data: bytes) -> None:
        if not data or self.finished or self.disconnected:
            return
        self._conn.write(data if self._http10 else b"%x\r\n%s\r\n" % (len(data), data))
        await self._conn.drain()

    def end(self, data: bytes = b"") -> None:
        if self.finished or self.disconnected:
            return
        self.finished = True
        if self._http10:
            tail = data  # the close that response_done makes ends the body
        else:
            tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        if tail:
            self._conn.write(tail)
        self._conn.response_done(self._keep_alive)
