"""The fastest fake neuron we can write: raw asyncio Protocol + httptools, keep-alive.

``python bench/fake_neuron.py --port N`` serves until killed; ``serve(port)`` starts it in
the running loop; ``spawn(port)`` runs it in a subprocess and waits until it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any

import httptools

from cortex import sse

MODEL: dict[str, Any] = {
    "id": "bench-model",
    "state": "ready",
    "source": "bench-model",
    "devices": ["cpu"],
    "memory_bytes": 1,
    "in_flight": 0,
    "queued": 0,
}
NODE = {
    "name": "fake",
    "version": "0.0.0",
    "engine": "fake",
    "devices": [
        {"index": 0, "kind": "cpu", "name": "fake", "memory_total": 1 << 34, "memory_free": 1 << 33}
    ],
    "models": [MODEL],
}
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return sse.encode(event)


def _response(body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (ctype, len(body))
        + body
    )


def _json(obj: object) -> bytes:
    return _response(json.dumps(obj, separators=(",", ":")).encode())


_SSE = (
    _chunk({"role": "assistant", "content": ""}, None)
    + _chunk({"content": "Hello"}, None)
    + _chunk({"content": "!"}, None)
    + _chunk({}, "stop")
    + sse.DONE
)
ROUTES = {
    (b"GET", b"/health"): _json({"status": "ok"}),
    (b"GET", b"/node"): _json(NODE),
    (b"GET", b"/models"): _json({"loaded": [MODEL], "available": []}),
    (b"POST", b"/v1/chat/completions"): _json(COMPLETION),
    (b"POST", b"stream"): _response(_SSE, b"text/event-stream"),
}
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class _Neuron(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        key = (method, self.url)
        if method == b"POST" and b'"stream":true' in b"".join(self.body).replace(b" ", b""):
            key = (b"POST", b"stream")
        self.body = []
        self.transport.write(ROUTES.get(key, NOT_FOUND))
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int = 0, host: str = "127.0.0.1") -> asyncio.Server:
    """Start the fake neuron in the running loop (port 0: a free one, see sockets)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(_Neuron, host, port, reuse_address=True, backlog=1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Run the fake neuron in a subprocess; return it and its port once it answers."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("fake neuron did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=13131)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    async def run() -> None:
        server = await serve(args.port, args.host)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
