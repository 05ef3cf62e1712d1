"""The real neuron of ``bench/engine.py``: the process, and what it reports about itself.

``NeuronProcess`` runs ``python -m cortex.neuron serve --preload bench=PATH`` on a free
127.0.0.1 port (with extra ``serve`` options where a mode needs them) and waits until the
model is ready on the expected device and dtype. ``node_record`` reads the model's record
from ``GET /node`` and ``prometheus_values`` sums the samples of the named series in
``GET /metrics``. The benchmark starts its neurons without an admin token, so these routes
are open.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import torch

MODEL_ID = "bench"
# continuous_usage_stats (vLLM's) puts the usage so far in every chunk: it tells whether the
# first text came with the first token or was held back.
STREAM_OPTIONS: Any = {"include_usage": True, "continuous_usage_stats": True}


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


class OptionRefused(BenchError):
    """``neuron serve`` does not know an option the benchmark gave it."""


def progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Suite:
    """What one suite measures, and where."""

    model: Path
    device: torch.device
    dtype: str  # as the neuron's --dtype spells it


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return f"cpu ({row.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: Linux sends it SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NeuronProcess:
    """``neuron serve`` with the model preloaded as ``bench``; stopped when the block exits."""

    def __init__(
        self,
        model: Path,
        *,
        threads: int | None,
        dtype: str,
        cuda: bool,
        log: Path,
        timeout: float,
        extra: Sequence[str] = (),
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.device = "cuda" if cuda else "cpu"
        self.dtype = dtype
        self.log_path = log
        self.timeout = timeout
        self.extra = list(extra)
        self.command = [
            sys.executable, "-m", "cortex.neuron", "serve",
            "--listen", f"127.0.0.1:{port}",
            "--preload", f"{MODEL_ID}={model}", "--allowed-path", str(model),
            "--dtype", dtype,
            "--log-level", "warning",
        ]  # fmt: skip
        if threads is not None:
            self.command += ["--cpu-threads", str(threads)]
        self.command += self.extra
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if cuda:
            # The one GPU the peers use (cuda:0), even where the neuron could use more.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            self.env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0] if visible else "0"
        else:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU run stays on the CPU
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NeuronProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(self.timeout)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Read the log before stopping: what the neuron writes as it stops would bury the cause.
        tail = self.log_tail()
        exited = self.process.poll() if self.process is not None else None
        self.stop()
        quiet = (KeyboardInterrupt, SystemExit, OptionRefused)  # the caller says what happened
        if exc_type is not None and not issubclass(exc_type, quiet):
            if exited is not None:
                print(f"the neuron had exited with status {exited}", file=sys.stderr)
            print(f"neuron log, last lines before it was stopped:\n{tail}", file=sys.stderr)

    def stop(self) -> None:
        stop_process(self.process, 15)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def _wait_ready(self, timeout: float) -> None:
        """Until the preloaded model is ready on the expected device and dtype."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        answered_without_it: float | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._refused_option()
                raise BenchError(f"the neuron exited with status {self.process.returncode}")
            listening, record = self._record()
            if listening and record is None:
                # The preload registers its record as it starts; none for a while: it failed.
                answered_without_it = answered_without_it or time.monotonic()
                if time.monotonic() - answered_without_it > 10:
                    raise BenchError(f"the neuron lists no model {MODEL_ID!r}: its preload failed")
            if record is not None and record["state"] == "failed":
                raise BenchError(f"the neuron could not load the model: {record.get('error')}")
            if record is not None and record["state"] == "ready":
                devices = record.get("devices") or []
                if not devices or not all(d.startswith(self.device) for d in devices):
                    raise BenchError(f"the neuron put the model on {devices}, not {self.device}")
                if record.get("dtype") != self.dtype:
                    raise BenchError(f"the neuron loaded {record.get('dtype')}, not {self.dtype}")
                return
            time.sleep(0.2)
        raise BenchError(f"the neuron did not have the model ready within {timeout:g} s")

    def _refused_option(self) -> None:
        """An ``OptionRefused`` if the neuron exited on one of the extra options."""
        assert self.process is not None
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.process.returncode != 2 or "No such option" not in log:
            return
        named = [o for o in self.extra if o.startswith("--") and o in log]
        raise OptionRefused(
            f"the neuron does not support {' '.join(named or self.extra)} "
            "(neuron serve: No such option)"
        )

    def _record(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether the neuron answered, its record of the benchmark's model)."""
        try:
            loaded = httpx.get(f"{self.url}/models", timeout=2.0).json()["loaded"]
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            return False, None  # not listening yet
        return True, next((r for r in loaded if r.get("id") == MODEL_ID), None)


def stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def node_record(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The benchmark model's record in ``GET /node``."""
    response = await client.get(f"{url}/node")
    response.raise_for_status()
    models = response.json().get("models") or []
    record = next((m for m in models if m.get("id") == MODEL_ID), None)
    if record is None:
        raise BenchError(f"GET /node lists no model {MODEL_ID!r}")
    return dict(record)


def prometheus_values(text: str, names: Sequence[str]) -> dict[str, float]:
    """The sum of each named series' samples (every label set) in Prometheus text; a name
    with no sample is left out."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0].strip()
        if name in names:
            with contextlib.suppress(ValueError):
                found[name] = found.get(name, 0.0) + float(value)
    return found
