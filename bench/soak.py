"""A bounded soak: does any process's memory keep growing under steady streaming load?

Two neurons serve the built-in tiny model (built locally, nothing downloaded); a gateway
(``cortex serve``) sits in front. ``--streams`` clients stream without pause through the
gateway, each request in the next dialect: OpenAI chat, OpenAI Responses, Anthropic
Messages. Every ``--every`` seconds the resident memory (VmRSS) of each process is read.

    .venv/bin/python bench/soak.py [--duration 600] [--streams 32] [--warmup 60]

Prints, per process, RSS at the end of warm-up, at half time and at the end, the growth
after warm-up and over the last half, against the goal (under 5%, flat over the last
half). Also requests and errors per dialect. There is no peer in this benchmark: the
figure is compared with the goal. ``--samples FILE`` writes every reading as CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

GOAL = 5.0  # percent, after warm-up
FLAT = 1.0  # percent over the last half counted as flat
PROMPTS = ["Tell me about the river.", "What is the weather like?", "Write a line of verse."]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


@dataclass
class Fleet:
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""

    def spawn(self, name: str, command: list[str], threads: int) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        env = {**os.environ, "NEURON_CPU_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def start(self, model: Path, threads: int) -> None:
        endpoints = {}
        for name in ("neuron-a", "neuron-b"):
            port = free_port()
            endpoints[name] = f"http://127.0.0.1:{port}"
            self.spawn(
                name,
                [sys.executable, "-m", "cortex.neuron", "serve", "--name", name,
                 "--listen", f"127.0.0.1:{port}", "--preload", f"tiny={model}",
                 "--allowed-path", str(model),
                 "--log-level", "warning"],
                threads,
            )  # fmt: skip
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        lines = ["[gateway]", f'listen = "127.0.0.1:{port}"',
                 f'metrics_listen = "127.0.0.1:{free_port()}"', 'poll_interval = "1s"']  # fmt: skip
        for name, endpoint in endpoints.items():
            lines += ["[[neurons]]", f'name = "{name}"', f'endpoint = "{endpoint}"']
        (self.workdir / "cortex.toml").write_text("\n".join(lines) + "\n")
        self.spawn(
            "gateway",
            [sys.executable, "-m", "cortex", "serve", "--config",
             str(self.workdir / "cortex.toml"), "--log-level", "warning"],
            threads,
        )  # fmt: skip
        self._wait_ready(len(endpoints))

    def _wait_ready(self, nodes: int) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text(errors="replace")
                    raise SystemExit(f"{name} exited with {process.returncode}:\n{log[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                fleet = httpx.get(f"{self.url}/fleet", timeout=2).json()
                ready = [
                    n for n in fleet["nodes"]
                    if any(m["id"] == "tiny" and m["state"] == "ready" for m in n["models"])
                ]  # fmt: skip
                if len(ready) == nodes:
                    return
            time.sleep(0.5)
        raise SystemExit("the fleet did not become ready within 180 s")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the load --------------------------------------------------------------------------


def request(dialect: str, prompt: str, tokens: int) -> tuple[str, dict[str, object]]:
    if dialect == "chat":
        messages = [{"role": "user", "content": prompt}]
        usage = {"include_usage": True}
        body = {"model": "tiny", "messages": messages, "max_tokens": tokens, "stream": True,
                "stream_options": usage}  # fmt: skip
        return "/v1/chat/completions", body
    if dialect == "responses":
        return "/v1/responses", {"model": "tiny", "input": prompt, "max_output_tokens": tokens,
                                 "stream": True}  # fmt: skip
    return "/v1/messages", {"model": "tiny", "max_tokens": tokens, "stream": True,
                            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip


TERMINAL = {
    "chat": b"data: [DONE]",
    "responses": b"response.completed",
    "messages": b"message_stop",
}


async def client(
    http: httpx.AsyncClient, index: int, stop_at: float, tokens: int, done: Counter[str]
) -> None:
    turn = index
    dialects = ("chat", "responses", "messages")
    while time.monotonic() < stop_at:
        dialect = dialects[turn % 3]
        path, body = request(dialect, PROMPTS[turn % len(PROMPTS)], tokens)
        turn += 1
        try:
            async with http.stream("POST", path, json=body) as response:
                data = b"".join([chunk async for chunk in response.aiter_bytes()])
            ok = response.status_code == 200 and any(end in data for end in TERMINAL[dialect])
        except httpx.HTTPError:
            ok = False
        done[f"{dialect} {'ok' if ok else 'error'}"] += 1


async def sample(
    fleet: Fleet, stop_at: float, every: float, readings: list[tuple[float, dict[str, int]]]
) -> None:
    start = time.monotonic()
    while time.monotonic() < stop_at:
        pids = {name: p.pid for name, p in fleet.processes.items()}
        readings.append((time.monotonic() - start, {n: rss_bytes(pid) for n, pid in pids.items()}))
        await asyncio.sleep(every)


async def soak(
    fleet: Fleet, args: argparse.Namespace
) -> tuple[list[tuple[float, dict[str, int]]], Counter[str]]:
    readings: list[tuple[float, dict[str, int]]] = []
    done: Counter[str] = Counter()
    stop_at = time.monotonic() + args.duration
    limits = httpx.Limits(max_connections=args.streams, max_keepalive_connections=args.streams)
    async with httpx.AsyncClient(base_url=fleet.url, timeout=120, limits=limits) as http:
        await asyncio.gather(
            sample(fleet, stop_at, args.every, readings),
            *(client(http, i, stop_at, args.tokens, done) for i in range(args.streams)),
        )
    return readings, done


# --- the report ------------------------------------------------------------------------


def at(readings: list[tuple[float, dict[str, int]]], t: float, name: str) -> int:
    """The mean of the readings within ±5% of the run around ``t`` (smooths GC noise)."""
    span = max(5.0, readings[-1][0] * 0.05)
    near = [r[name] for when, r in readings if abs(when - t) <= span]
    return int(sum(near) / len(near)) if near else readings[-1][1][name]


def report(
    readings: list[tuple[float, dict[str, int]]], done: Counter[str], args: argparse.Namespace
) -> None:
    end = readings[-1][0]
    warm = min(args.warmup, end / 2)
    half = warm + (end - warm) / 2
    print(f"soak: {args.duration:.0f} s, {args.streams} streams, {args.tokens} tokens per reply, "
          f"warm-up {warm:.0f} s, {len(readings)} readings")  # fmt: skip
    for name in readings[0][1]:
        start, mid, last = (
            at(readings, warm, name),
            at(readings, half, name),
            at(readings, end, name),
        )
        growth = 100 * (last - start) / start
        late = 100 * (last - mid) / mid
        verdict = "meets" if growth < GOAL and late < FLAT else "misses"
        print(f"rss {name}: {start / 2**20:.1f} → {mid / 2**20:.1f} → {last / 2**20:.1f} MiB, "
              f"growth {growth:+.2f}% after warm-up (goal <{GOAL:.0f}%), last half {late:+.2f}% "
              f"(flat <{FLAT:.0f}%): {verdict}")  # fmt: skip
    for key in sorted(done):
        print(f"requests {key}: {done[key]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds of load (default 600)"
    )
    parser.add_argument("--streams", type=int, default=32, help="concurrent streaming clients")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before growth counts")
    parser.add_argument("--tokens", type=int, default=32, help="max tokens per reply")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS readings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per neuron")
    parser.add_argument("--samples", type=Path, help="write every reading to this CSV file")
    args = parser.parse_args()

    from cortex.testing.model import cached_model

    progress("building (or reusing) the tiny model")
    model = cached_model(trained=False)
    with tempfile.TemporaryDirectory(prefix="cortex-soak-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            progress("starting two neurons and a gateway")
            fleet.start(model, args.threads)
            progress(f"soaking for {args.duration:.0f} s")
            readings, done = asyncio.run(soak(fleet, args))
        finally:
            fleet.stop()
    if args.samples:
        names = list(readings[0][1])
        rows = [",".join(["t", *names])]
        rows += [",".join([f"{t:.1f}", *(str(r[n]) for n in names)]) for t, r in readings]
        args.samples.write_text("\n".join(rows) + "\n")
    report(readings, done, args)


if __name__ == "__main__":
    main()
