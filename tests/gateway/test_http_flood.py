"""A flood of header bytes costs the gateway's HTTP server no memory: it answers 431 one
read past ``max_header_bytes`` and drains the rest unparsed. The server runs in its own
process (on asyncio and on uvloop, which the gateway uses) so its RSS can be read."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER = """
import asyncio, json, sys
from cortex.gateway.http import HttpServer

async def main():
    async def ok(request, responder):
        responder.respond(200, b"ok")

    def error(path, err):
        return b"application/json", json.dumps({"error": err.message}).encode()

    server = HttpServer(ok, error, max_body=1 << 20)
    await server.start("127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.get_running_loop().create_future()

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

FLOOD_MB = 100


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """(pid, port) of a server process, stopped after the test."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, request.param], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield process.pid, port
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def exchange(port: int, head: bytes, flood_mb: int = 0) -> bytes:
    """Send ``head`` and ``flood_mb`` MiB of header bytes after it; what came back by close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        chunk = b"a" * (1 << 20)
        try:
            sock.sendall(head)
            for _ in range(flood_mb):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop draining: what it answered is still to be read
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass
        return received


def test_header_floods_get_431_and_leave_no_memory_behind(server: tuple[int, int]) -> None:
    pid, port = server
    assert exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").endswith(b"ok")
    exchange(port, b"GET / HTTP/1.1\r\nX-Flood: ", flood_mb=1)  # warm the error path
    time.sleep(0.2)
    before = rss_mb(pid)
    for _ in range(4):
        answer = exchange(port, b"GET /flood HTTP/1.1\r\nHost: x\r\nX-Flood: ", FLOOD_MB)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
        assert b"connection: close" in answer
        # Many short headers, not one long one.
        many = exchange(port, b"GET /flood HTTP/1.1\r\n" + b"X-A: b\r\n" * 200_000)
        assert many.startswith(b"HTTP/1.1 431"), many
    time.sleep(0.2)
    after = rss_mb(pid)
    assert after < before + 50, (before, after)
    # And the server still serves.
    assert exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").endswith(b"ok")
