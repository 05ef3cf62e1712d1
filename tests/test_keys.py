"""``cortex keys``: a new key is printed once and only its sha256 reaches the key file."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cortex.cli import app
from cortex.config import CortexConfig
from cortex.gateway.auth import KeyTable


def _keys(*args: str) -> Any:
    result = CliRunner().invoke(app, ["keys", *args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cortex.toml"
    path.write_text(
        'keys_file = "keys.toml"\n[[keys]]\nname = "inline"\nkey = "sk-inline"\n'
        '[[neurons]]\nname = "a"\nendpoint = "http://127.0.0.1:1"\n'
    )
    return path


def test_add_prints_the_key_once_and_stores_its_sha256(config: Path) -> None:
    result = _keys(
        "add", "laptop", "--models", "qwen3-*,coder", "--requests-per-minute", "120",
        "--max-concurrent", "8", "--config", str(config),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("sk-cortex-")
    assert len(secret) > 40
    text = (config.parent / "keys.toml").read_text()
    assert secret not in text
    assert (config.parent / "keys.toml").stat().st_mode & 0o777 == 0o600
    entry = tomllib.loads(text)["keys"][0]
    assert entry == {
        "name": "laptop",
        "key_sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "models": ["qwen3-*", "coder"],
        "requests_per_minute": 120,
        "max_concurrent": 8,
    }
    admin = _keys("add", "ops", "--admin", "--config", str(config))
    assert admin.exit_code == 0
    table = KeyTable(CortexConfig(keys_file=config.parent / "keys.toml"))
    headers = [(b"authorization", b"Bearer " + admin.stdout.strip().encode())]
    assert table.operator(headers).name == "ops"
    assert table.authenticate([(b"x-api-key", secret.encode())]).name == "laptop"


def test_a_name_in_use_is_refused_and_the_file_kept(config: Path) -> None:
    assert _keys("add", "laptop", "--config", str(config)).exit_code == 0
    before = (config.parent / "keys.toml").read_text()
    for name in ("laptop", "inline"):
        result = _keys("add", name, "--config", str(config))
        assert result.exit_code == 1
        assert "exists already" in result.stderr
        assert result.stdout == ""
    assert (config.parent / "keys.toml").read_text() == before


def test_list_shows_names_and_rights_never_secrets(config: Path) -> None:
    _keys("add", "laptop", "--models", "m1", "--admin", "--config", str(config))
    result = _keys("list", "--config", str(config))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["inline\tmodels=*", "laptop\tmodels=m1 admin"]
    assert "sk-" not in result.stdout


def test_a_config_without_keys_file_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "cortex.toml"
    path.write_text("[gateway]\n")
    result = _keys("add", "laptop", "--config", str(path))
    assert result.exit_code == 1
    assert 'keys_file = "keys.toml"' in result.stderr
