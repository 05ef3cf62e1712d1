"""Real processes on 127.0.0.1 with free ports, always stopped, also when a test fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import Gateway, Neuron


@pytest.fixture(scope="session")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, trained_model: Path
) -> Path:
    """A model dir holding the tiny models under the names tests use."""
    root = tmp_path_factory.mktemp("models")
    for name, source in {
        "tiny": tiny_model,
        "trained": trained_model,
        "tiny-b": tiny_model,
    }.items():
        shutil.copytree(source, root / name)
    return root


@pytest.fixture(scope="session")
def fleet_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, trained_model: Path
) -> Path:
    """Copies of the tiny model under several ids (m1…m5), and the trained one."""
    root = tmp_path_factory.mktemp("fleet-models")
    for name in ("m1", "m2", "m3", "m4", "m5"):
        shutil.copytree(tiny_model, root / name)
    shutil.copytree(trained_model, root / "trained")
    return root


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_gateway(neurons, models_toml, **kw)`` → a running Gateway."""
    started: list[Gateway] = []

    def start(neurons: dict[str, Neuron], models_toml: str, **kwargs: Any) -> Gateway:
        gateway = Gateway(neurons, models_toml, tmp_path / f"gateway-{len(started)}", **kwargs)
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def start_neuron(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_neuron(*args)`` → a running Neuron, stopped after the test."""
    started: list[Neuron] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Neuron:
        neuron = Neuron(list(args), tmp_path / f"neuron-{len(started)}.log", env)
        started.append(neuron)
        neuron.wait_ready()
        return neuron

    yield start
    for neuron in started:
        neuron.stop()


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Neuron]:
    """One neuron per test module, with the model dir and ``tiny`` preloaded."""
    log_dir = tmp_path_factory.mktemp("neuron-log")
    process = Neuron(
        ["--model-dir", str(model_dir), "--preload", "tiny", "--name", "e2e"],
        log_dir / "neuron.log",
    )
    try:
        process.wait_ready()
        process.wait_loaded("tiny")
        yield process
    finally:
        process.stop()
