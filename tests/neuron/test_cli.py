"""``neuron serve`` refuses a bad config before it starts, naming file, key and reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.neuron.cli import default_cpu_threads


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex.neuron", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_bad_config_file_is_refused_with_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "neuron.toml"
    config.write_text('memory_budget = "plenty"\n')
    result = _serve("--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "memory_budget" in result.stderr
    assert "not a size" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_value_is_refused(tmp_path: Path) -> None:
    result = _serve(env={"NEURON_LISTEN": "nowhere"})
    assert result.returncode == 2
    assert "listen" in result.stderr
    assert "HOST:PORT" in result.stderr


def test_torch_threads_default_to_every_core_but_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, threads in ((1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(
            os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False
        )
        assert default_cpu_threads() == threads
