"""Running an ASGI app (the gateway's Starlette control routes) on ``gateway.http``.

Only the low-traffic routes come this way; the hot path never builds an ASGI scope.
A response whose body arrives in one message is written in one piece; one sent in
several (``StreamingResponse``: SSE load progress) is streamed with chunked encoding.
A client that disconnects cancels the handler's task, which cancels the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cortex.gateway.http import HttpRequest, Responder

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_HOP_BY_HOP = {b"content-length", b"transfer-encoding", b"connection", b"content-type"}


async def call_asgi(app: ASGIApp, request: HttpRequest, responder: Responder) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "server": None,
        "client": None,
        "state": {},
    }
    body_sent = False
    status = 200
    headers: list[tuple[bytes, bytes]] = []
    content_type = b"application/octet-stream"

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Future()  # no more body; a disconnect cancels this task instead
        return {"type": "http.disconnect"}  # pragma: no cover - never reached

    async def send(message: Message) -> None:
        nonlocal status, headers, content_type
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers", []):
                key = bytes(name).lower()
                if key == b"content-type":
                    content_type = bytes(value)
                elif key not in _HOP_BY_HOP:
                    headers.append((key, bytes(value)))
            return
        if message["type"] != "http.response.body":
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not responder.started and not more:
            responder.respond(status, body, content_type, headers)
            return
        if not responder.started:
            responder.start(status, [(b"content-type", content_type), *headers])
        if more:
            await responder.write(body)
        else:
            responder.end(body)

    await app(scope, receive, send)
