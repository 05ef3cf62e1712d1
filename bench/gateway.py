"""What the gateway costs on a request's path: added latency and requests/s.

A fake neuron that answers instantly (``bench/fake_neuron.py``) claims a ready model;
the gateway (``cortex serve``, routing and metrics on) sits in front of it. The peer
is the fake neuron straight: the same requests without the gateway, in the same run.

    .venv/bin/python bench/gateway.py [--requests 3000] [--duration 5] [--connections 64]

Prints one line per figure with the direct figure and the ratio. ``wrk`` (Debian
package ``wrk``) is used for throughput when present, else a multi-process Python
load generator (slower: it competes with the gateway for the same 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import fake_neuron
import loadgen

BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
).encode()


def start_gateway(neuron_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, metrics_port = fake_neuron.free_port(), fake_neuron.free_port()
    (workdir / "cortex.toml").write_text(
        "[gateway]\n"
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
            if httpx.get(f"{url}/v1/models", timeout=1).json()["data"][0]["state"] == "ready":
                return process, url
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not come up")


def line(name: str, ours: float, peer: float, unit: str, fmt: str = "{:.3f}") -> None:
    ratio = ours / peer if peer else float("inf")
    print(
        f"{name}: {fmt.format(ours)} {unit} (direct {fmt.format(peer)} {unit}, ratio {ratio:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

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


def _metrics_port(workdir: Path) -> int:
    for row in (workdir / "cortex.toml").read_text().splitlines():
        if row.startswith("metrics_listen"):
            return int(row.split(":")[-1].strip('"'))
    raise SystemExit("no metrics_listen")


if __name__ == "__main__":
    main()
