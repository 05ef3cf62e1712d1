"""Micro-benchmark: the gateway's UpstreamPool against httpx.AsyncClient.

Both talk straight to a fake neuron (``bench/fake_neuron.py``) in its own process, from one
uvloop process: sequential latency (median, p99) and throughput with 64 requests in
flight. ``python bench/upstream.py [-n 5000] [-d 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cortex.gateway.upstream import UpstreamPool
from fake_neuron import spawn

BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Hi"}],"max_tokens":8}'
HEADERS = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
PATH = "/v1/chat/completions"

Call = Callable[[], Awaitable[bytes]]


async def _latency(call: Call, n: int) -> list[float]:
    for _ in range(min(500, n)):
        await call()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await call()
        out.append(clock() - start)
    return out


async def _throughput(call: Call, inflight: int, duration: float) -> float:
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            await call()
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(inflight)]
    await asyncio.sleep(0.3)  # warm-up: connections opened
    start_count, start = done, time.perf_counter()
    await asyncio.sleep(duration)
    count, elapsed = done - start_count, time.perf_counter() - start
    stop = True
    await asyncio.gather(*tasks)
    return count / elapsed


async def bench(endpoint: str, n: int, duration: float) -> dict[str, tuple[float, float, float]]:
    pool = UpstreamPool()
    client = httpx.AsyncClient(
        base_url=endpoint, limits=httpx.Limits(max_connections=128, max_keepalive_connections=128)
    )
    expected = (await (await pool.request(endpoint, "POST", PATH, HEADERS, BODY)).read())[:16]

    async def ours() -> bytes:
        resp = await pool.request(endpoint, "POST", PATH, HEADERS, BODY, timeout=30)
        return await resp.read()

    async def theirs() -> bytes:
        resp = await client.post(PATH, content=BODY, headers=dict(HEADERS))
        return resp.content

    assert (await ours())[:16] == expected == (await theirs())[:16]
    lat = {
        name: sorted(await _latency(call, n)) for name, call in (("ours", ours), ("httpx", theirs))
    }
    rps = {
        name: await _throughput(call, 64, duration)
        for name, call in (("ours", ours), ("httpx", theirs))
    }
    await pool.aclose()
    await client.aclose()

    def p(xs: list[float], q: float) -> float:
        return (statistics.median(xs) if q == 0.5 else xs[int(len(xs) * q)]) * 1e3

    return {
        "latency p50": (p(lat["ours"], 0.5), p(lat["httpx"], 0.5), 0),
        "latency p99": (p(lat["ours"], 0.99), p(lat["httpx"], 0.99), 0),
        "throughput @64": (rps["ours"], rps["httpx"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000, help="sequential requests per client")
    parser.add_argument("-d", "--duration", type=float, default=3.0, help="seconds per run")
    args = parser.parse_args()
    proc, port = spawn()
    try:
        figures = uvloop.run(bench(f"http://127.0.0.1:{port}", args.n, args.duration))
    finally:
        proc.terminate()
        proc.wait()
    for name, (ours, theirs, is_rate) in figures.items():
        unit, fmt = (" req/s", "{:,.0f}") if is_rate else (" ms", "{:.3f}")
        a, b = fmt.format(ours) + unit, fmt.format(theirs) + unit
        print(f"upstream {name}: {a} (httpx {b}, ratio {ours / theirs:.2f})")


if __name__ == "__main__":
    main()
