"""What the gateway costs on a request's path: added latency and requests/s.

A fake neuron that answers instantly (``bench/fake_neuron.py``) claims a ready model;
the gateway (``cortex serve``, routing and metrics on) sits in front of it. The peer
is the fake neuron straight: the same requests without the gateway, in the same run.

    .venv/bin/python bench/gateway.py [--requests 3000] [--duration 5] [--connections 64]
    .venv/bin/python bench/gateway.py --keys [--rounds 3]

Prints one line per figure with the direct figure and the ratio. ``--keys`` measures
instead what API keys cost: a gateway with a key (model glob, requests_per_minute and
max_concurrent, all far above the load) against one without keys, in turns (``--rounds``
each, one gateway at a time), and prints the medians and their ratio; then the gateway's
CPU time per request (its user+system seconds over the requests it counted). ``wrk``
(Debian package ``wrk``) is used for throughput when present, else a multi-process Python
load generator (slower: it competes with the gateway for the same 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))

import fake_neuron
import loadgen

BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
).encode()


BENCH_KEY = "sk-cortex-bench-0123456789"
KEYS = (
    '[[keys]]\nname = "bench"\n'
    f'key_sha256 = "{hashlib.sha256(BENCH_KEY.encode()).hexdigest()}"\n'
    'models = ["bench-*"]\nrequests_per_minute = 100000000\nmax_concurrent = 100000\n'
)


def start_gateway(
    neuron_port: int, workdir: Path, top: str = "", headers: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``top``: TOML before [gateway] ([[keys]]); ``headers``: what its /v1/models needs."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, metrics_port = fake_neuron.free_port(), fake_neuron.free_port()
    (workdir / "cortex.toml").write_text(
        top + "[gateway]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
        'poll_interval = "2s"\n'
        "[[neurons]]\n"
        'name = "fake"\n'
        f'endpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cortex", "serve", "--config", str(workdir / "cortex.toml"),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            listing = httpx.get(f"{url}/v1/models", headers=headers, timeout=1).json()
            if listing["data"][0]["state"] == "ready":
                return process, url
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not come up")


def line(
    name: str, ours: float, peer: float, unit: str, fmt: str = "{:.3f}", peer_name: str = "direct"
) -> None:
    ratio = ours / peer if peer else float("inf")
    print(
        f"{name}: {fmt.format(ours)} {unit} "
        f"({peer_name} {fmt.format(peer)} {unit}, ratio {ratio:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keys", action="store_true", help="with API keys vs without")
    parser.add_argument("--rounds", type=int, default=3, help="turns each, with --keys")
    args = parser.parse_args()
    if args.keys:
        keys_cost(args.connections, args.duration, args.rounds)
        return

    neuron, neuron_port = fake_neuron.spawn()
    with tempfile.TemporaryDirectory() as tmp:
        gateway, gateway_url = start_gateway(neuron_port, Path(tmp))
        direct_url = f"http://127.0.0.1:{neuron_port}"
        path = "/v1/chat/completions"
        try:
            direct = loadgen.latency(direct_url + path, BODY, args.requests)
            through = loadgen.latency(gateway_url + path, BODY, args.requests)
            d50, d99 = loadgen.summary(direct)
            g50, g99 = loadgen.summary(through)
            # summary() gives milliseconds.
            for name, ours, peer in (("p50", g50, d50), ("p99", g99, d99)):
                print(
                    f"added latency {name}: {ours - peer:.3f} ms "
                    f"(gateway {ours:.3f} ms vs direct {peer:.3f} ms)"
                )
            line("latency p50", g50, d50, "ms")
            line("latency p99", g99, d99, "ms")
            direct_rps = loadgen.throughput(
                direct_url + path, BODY, args.connections, args.duration
            )
            gateway_rps = loadgen.throughput(
                gateway_url + path, BODY, args.connections, args.duration
            )
            line(
                f"throughput @{args.connections} connections", gateway_rps, direct_rps, "req/s",
                "{:,.0f}",
            )  # fmt: skip
            metrics = httpx.get(f"http://127.0.0.1:{_metrics_port(Path(tmp))}/metrics")
            served = sum(
                float(row.rsplit(" ", 1)[1])
                for row in metrics.text.splitlines()
                if row.startswith("cortex_requests_total{")
            )
            print(f"gateway recorded {served:,.0f} requests in cortex_requests_total")
        finally:
            gateway.terminate()
            gateway.wait(10)
            neuron.terminate()
            neuron.wait(10)


def keys_cost(connections: int, duration: float, rounds: int) -> None:
    """Throughput with a key against without keys, on one fake neuron. One gateway runs at
    a time, started afresh for each turn: with two long-lived gateways, the one started
    second measured up to a fifth slower than its identical twin on 2 shared cores."""
    neuron, neuron_port = fake_neuron.spawn()
    auth = {"Authorization": f"Bearer {BENCH_KEY}"}
    rps: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}  # µs per request
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for turn in range(rounds):  # which goes first alternates: no side gains by order
                for keys in (False, True) if turn % 2 == 0 else (True, False):
                    workdir = Path(tmp) / f"{turn}-{'keys' if keys else 'plain'}"
                    headers = auth if keys else None
                    process, url = start_gateway(
                        neuron_port, workdir, KEYS if keys else "", headers
                    )
                    try:
                        gauge = psutil.Process(process.pid)
                        before, served = _cpu_seconds(gauge), _served(workdir)
                        rps[keys].append(
                            loadgen.throughput(
                                url + "/v1/chat/completions", BODY, connections, duration, headers
                            )
                        )
                        requests = _served(workdir) - served
                        cpu[keys].append((_cpu_seconds(gauge) - before) / requests * 1e6)
                    finally:
                        process.terminate()
                        process.wait(10)
                print(
                    f"round {turn + 1}: no keys {rps[False][-1]:,.0f} req/s "
                    f"({cpu[False][-1]:.1f} µs CPU each), keys {rps[True][-1]:,.0f} req/s "
                    f"({cpu[True][-1]:.1f} µs CPU each)"
                )
    finally:
        neuron.terminate()
        neuron.wait(10)
    line(
        f"throughput with keys @{connections} connections (median of {rounds})",
        statistics.median(rps[True]), statistics.median(rps[False]), "req/s", "{:,.0f}",
        peer_name="no keys",
    )  # fmt: skip
    line(
        f"gateway CPU per request with keys (median of {rounds})",
        statistics.median(cpu[True]), statistics.median(cpu[False]), "µs", "{:.1f}",
        peer_name="no keys",
    )  # fmt: skip


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _served(workdir: Path) -> float:
    """The gateway's cortex_requests_total, summed over its label sets."""
    metrics = httpx.get(f"http://127.0.0.1:{_metrics_port(workdir)}/metrics", timeout=10)
    return sum(
        float(row.rsplit(" ", 1)[1])
        for row in metrics.text.splitlines()
        if row.startswith("cortex_requests_total{")
    )


def _metrics_port(workdir: Path) -> int:
    for row in (workdir / "cortex.toml").read_text().splitlines():
        if row.startswith("metrics_listen"):
            return int(row.split(":")[-1].strip('"'))
    raise SystemExit("no metrics_listen")


if __name__ == "__main__":
    main()
