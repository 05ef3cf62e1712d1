"""Real neuron and gateway processes for end-to-end tests, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process serving HTTP at ``url``; its output goes to ``log_path``.

    ``verify``: it serves HTTPS, and requests to it verify its certificate with this."""

    def __init__(
        self,
        command: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.verify: ssl.SSLContext | bool = verify or True
        self.url = f"{'https' if verify else 'http'}://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "NEURON_CPU_THREADS": "1", **(env or {})}
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )

    def wait_ready(self, path: str = "/health") -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"process exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}{path}", timeout=1.0, verify=self.verify)
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"process did not answer within {STARTUP_TIMEOUT}s:\n{self.log()}")

    def wait_loaded(self, model: str, timeout: float = 60.0) -> None:
        """Until the neuron's ``model`` is ready (health answers before a preload ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # a busy machine can hold /node past a poll's timeout while a load starts
                models = httpx.get(f"{self.url}/node", timeout=5.0, verify=self.verify).json()
            except httpx.TimeoutException:
                continue
            if any(m["id"] == model and m["state"] == "ready" for m in models["models"]):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{model} was not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: no goodbye, like a host that loses power."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60.0, verify=self.verify, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=120.0, verify=self.verify, **kwargs)

    def stream_post(self, path: str, body: dict[str, Any]) -> Any:
        """``with process.stream_post(path, body) as response:`` — an SSE response."""
        url = f"{self.url}{path}"
        return httpx.stream("POST", url, json=body, timeout=120.0, verify=self.verify)


class Neuron(Process):
    """``neuron serve`` with the given flags."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """``verify``: ``args`` make it serve HTTPS (--tls-cert/--tls-key); trust it so."""
        port = free_port()
        command = [sys.executable, "-m", "cortex.neuron", "serve", "--listen", f"127.0.0.1:{port}"]
        super().__init__([*command, *args], port, log_path, env, verify)


class Gateway(Process):
    """``cortex serve`` over a cortex.toml written for the given neurons."""

    def __init__(
        self,
        neurons: dict[str, Neuron],
        models_toml: str,
        workdir: Path,
        *,
        strategy: str = "lru",
        extra: str = "",
        top: str = "",
        gateway: dict[str, str] | None = None,
        neuron_keys: dict[str, dict[str, str | bool]] | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """``top``: TOML before ``[gateway]`` (top-level keys such as keys_file, ``[[keys]]``);
        ``gateway``: more ``[gateway]`` keys (quoted as strings), e.g. request_timeout;
        ``neuron_keys``: more keys of a ``[[neurons]]`` entry, by name, e.g. ca_file;
        ``verify``: it serves HTTPS (``gateway`` has tls_cert/tls_key): trust it so."""
        port, metrics_port = free_port(), free_port()
        self.metrics_url = f"{'https' if verify else 'http'}://127.0.0.1:{metrics_port}"
        lines = [
            top,
            "[gateway]",
            f'listen = "127.0.0.1:{port}"',
            f'metrics_listen = "127.0.0.1:{metrics_port}"',
            'poll_interval = "300ms"',
            *(f'{key} = "{value}"' for key, value in (gateway or {}).items()),
            "[eviction]",
            f'strategy = "{strategy}"',
            extra,
        ]
        for name, neuron in neurons.items():
            lines += ["[[neurons]]", f'name = "{name}"', f'endpoint = "{neuron.url}"']
            for key, value in (neuron_keys or {}).get(name, {}).items():
                lines.append(f"{key} = {json.dumps(value)}")  # a TOML string or boolean
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "cortex.toml").write_text("\n".join(lines) + "\n")
        (workdir / "models.toml").write_text(models_toml)
        command = [
            sys.executable,
            "-m",
            "cortex",
            "serve",
            "--config",
            str(workdir / "cortex.toml"),
        ]
        super().__init__(command, port, workdir / "gateway.log", None, verify)

    def metrics(self) -> str:
        return httpx.get(f"{self.metrics_url}/metrics", timeout=10, verify=self.verify).text

    def fleet(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/fleet").json()
        return data

    def loaded(self, node: str) -> set[str]:
        for item in self.fleet()["nodes"]:
            if item["name"] == node:
                return {m["id"] for m in item["models"] if m["state"] == "ready"}
        raise KeyError(node)
