"""``cortex serve`` refuses a bad configuration before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _cortex(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cortex", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_serve_refuses_a_bad_file_naming_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "cortex.toml"
    config.write_text('[gateway]\npoll_interval = "often"\n')
    result = _cortex("serve", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "gateway.poll_interval" in result.stderr
    assert "not a duration" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_neurons_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "cortex.toml"
    config.write_text("[gateway]\n")
    result = _cortex("serve", "--config", str(config))
    assert result.returncode == 2
    assert "[[neurons]]" in result.stderr


def test_serve_refuses_a_bad_key_file(tmp_path: Path) -> None:
    config = tmp_path / "cortex.toml"
    config.write_text(
        'keys_file = "keys.toml"\n[[neurons]]\nname = "a"\nendpoint = "http://127.0.0.1:1"\n'
    )
    (tmp_path / "keys.toml").write_text('[[keys]]\nname = "laptop"\nkey_sha256 = "abc"\n')
    result = _cortex("serve", "--config", str(config))
    assert result.returncode == 2
    assert str(tmp_path / "keys.toml") in result.stderr
    assert "keys.0.key_sha256" in result.stderr
    assert "Traceback" not in result.stderr
