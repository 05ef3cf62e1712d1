"""A load generator for the gateway and fake neurons, usable from Python or the shell.

``latency(url, body, n)``: n sequential requests over one keep-alive connection with a
blocking raw socket (the least client overhead Python can have); per-request seconds.

``throughput(url, body, connections, duration)``: requests/s with ``connections`` in
flight. Uses ``wrk`` when it is on PATH (Debian package ``wrk``), else a Python fallback
of several processes (uvloop + httptools, one raw Protocol per connection) so that the
generator itself is not the bottleneck. Prints which generator it used.

``python bench/loadgen.py URL [--body JSON] [-n N] [-c C] [-d SECONDS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

import httptools

JSON = b"application/json"


Headers = dict[str, str]


def _request(
    url: str, body: bytes | None, headers: Headers | None = None
) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\n".encode()
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items()).encode()
    if body is not None:
        head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (JSON, len(body))
    return host, port, head + b"\r\n" + (body or b"")


class _Reader(asyncio.Protocol):
    """Response framing for the blocking client: httptools tells when a response ends."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def latency(
    url: str, body: bytes | None, n: int, warmup: int = 200, headers: Headers | None = None
) -> list[float]:
    """Seconds per request, n sequential requests on one keep-alive connection."""
    host, port, req = _request(url, body, headers)
    reader = _Reader()
    out: list[float] = []
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + n):
            start = time.perf_counter()
            sock.sendall(req)
            want = reader.complete + 1
            while reader.complete < want:
                data = sock.recv(262144)
                if not data:
                    raise ConnectionError("server closed the connection")
                reader.parser.feed_data(data)
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


# -- throughput -------------------------------------------------------------------------


def _wrk(
    url: str, body: bytes | None, connections: int, duration: float, headers: Headers | None
) -> float:
    threads = max(1, min(connections, os.cpu_count() or 1))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(
                'wrk.method = "POST"\n'
                f"wrk.body = {_lua_string(body)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
        for name, value in (headers or {}).items():
            script.write(
                f"wrk.headers[{_lua_string(name.encode())}] = {_lua_string(value.encode())}\n"
            )
    try:
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s"]
        out = subprocess.run(
            [*cmd, "-s", script.name, url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"wrk reported errors: {errors.group(0)}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return float(match.group(1))


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


class _Client(asyncio.Protocol):
    """One connection, one request in flight, the next sent as soon as one completes."""

    def __init__(self, req: bytes, stats: list[int]) -> None:
        self.req = req
        self.stats = stats
        self.parser = httptools.HttpResponseParser(self)
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.req)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        if not 200 <= self.parser.get_status_code() < 300:
            self.stats[1] += 1

    def on_message_complete(self) -> None:
        self.stats[0] += 1
        if self.running:
            self.transport.write(self.req)


def _worker(
    url: str,
    body: bytes | None,
    conns: int,
    duration: float,
    q: mp.Queue[int],
    headers: Headers | None = None,
) -> None:
    import uvloop

    host, port, req = _request(url, body, headers)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stats = [0, 0]
        clients = []
        for _ in range(conns):
            _, client = await loop.create_connection(lambda: _Client(req, stats), host, port)
            clients.append(client)
        await asyncio.sleep(0.2)  # warm-up
        start_count = stats[0]
        await asyncio.sleep(duration)
        done = stats[0] - start_count
        for client in clients:
            client.running = False
            client.transport.close()
        if stats[1]:
            print(f"python loadgen: {stats[1]} non-2xx responses")
        return done

    q.put(uvloop.run(run()))


def _python(
    url: str, body: bytes | None, connections: int, duration: float, headers: Headers | None = None
) -> float:
    procs_n = max(1, min(connections, os.cpu_count() or 1))
    print(f"loadgen: python fallback, {procs_n} processes")
    ctx = mp.get_context("spawn")
    q: mp.Queue[int] = ctx.Queue()
    shares = [connections // procs_n + (i < connections % procs_n) for i in range(procs_n)]
    procs = [ctx.Process(target=_worker, args=(url, body, s, duration, q, headers)) for s in shares]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=duration + 30) for _ in procs)
    for p in procs:
        p.join()
    return total / duration


def throughput(
    url: str,
    body: bytes | None,
    connections: int = 64,
    duration: float = 5.0,
    headers: Headers | None = None,
) -> float:
    """Requests/s with ``connections`` keep-alive connections, each one request in flight;
    ``headers`` go with every request (an API key, say)."""
    if shutil.which("wrk"):
        print(f"loadgen: wrk, {connections} connections")
        return _wrk(url, body, connections, duration, headers)
    return _python(url, body, connections, duration, headers)


def summary(samples: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--body", help="POST this JSON (default: GET)")
    parser.add_argument("-n", type=int, default=5000, help="sequential requests for latency")
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--python", action="store_true", help="never use wrk")
    args = parser.parse_args()
    body = args.body.encode() if args.body is not None else None
    p50, p99 = summary(latency(args.url, body, args.n))
    print(f"latency: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({args.n} sequential)")
    if args.python:
        rps = _python(args.url, body, args.connections, args.duration)
    else:
        rps = throughput(args.url, body, args.connections, args.duration)
    print(f"throughput: {rps:,.0f} req/s at {args.connections} connections")


if __name__ == "__main__":
    main()
