"""The fleet's lifecycle at ``GET /fleet/events`` and in ``cortex events``: loads, an eviction
with its reason, a node going down, as they happen and from the backlog."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex import sse
from tests.e2e.test_gateway import KV, TWO_MODELS, _ask, _profile, _profiles

pytestmark = pytest.mark.e2e


def _listen(url: str, into: list[tuple[str, dict[str, Any]]], stop: threading.Event) -> None:
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", f"{url}/fleet/events") as response,
        ):
            for event in sse.events(response.iter_bytes()):
                if event.data:
                    into.append((event.name, json.loads(event.data)))
                if stop.is_set():
                    return
    except httpx.HTTPError:
        if not stop.is_set():  # the gateway stopping at the end of the test ends the stream
            raise


def _wait(events: list[tuple[str, dict[str, Any]]], kind: str, text: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name, data in list(events):
            if name == kind and text in data["message"]:
                return data
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event with {text!r} in {events}")


def test_loads_an_eviction_and_a_node_down_as_they_happen(
    start_neuron: Any, start_gateway: Any, fleet_dir: Path
) -> None:
    a = start_neuron(
        "--model-dir", str(fleet_dir), "--memory-budget", TWO_MODELS, "--name", "a", *KV
    )
    gateway = start_gateway({"a": a}, _profiles(*(_profile(m) for m in ("m1", "m2", "m3"))))
    events: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    listener = threading.Thread(target=_listen, args=(gateway.url, events, stop), daemon=True)
    listener.start()
    _ask(gateway, "m1")
    _ask(gateway, "m2")
    _ask(gateway, "m3")  # no room for three: the least recently used goes
    _wait(events, "loading", "loading m1 on a")
    assert _wait(events, "loaded", "m1 is ready on a")["node"] == "a"
    evicted = _wait(events, "evicting", "m1 on a")
    assert "to make room for m3" in evicted["message"]
    assert "lru" in evicted["message"]
    _wait(events, "loading", "loading m3 on a, evicting m1")
    _wait(events, "unloaded", "m1 is no longer on a")
    a.kill()
    _wait(events, "node_down", "a is down")
    stop.set()
    seqs = [data["seq"] for _, data in events]
    assert seqs == sorted(seqs)  # in order, each once

    # The backlog, from the command line.
    shown = subprocess.run(
        [sys.executable, "-m", "cortex", "events", "--no-follow", "--gateway", gateway.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "evicting" in shown.stdout
    assert "to make room for m3" in shown.stdout
    assert "node_down" in shown.stdout
