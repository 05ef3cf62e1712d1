"""``neuron serve`` refuses a bad config before it starts, naming file, key and reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cortex.config import NeuronConfig, load_neuron_config
from cortex.errors import ConfigError
from cortex.neuron import cli as neuron_cli
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


def test_protect_all_without_an_admin_token_is_refused() -> None:
    result = _serve(env={"NEURON_PROTECT": "all"})
    assert result.returncode == 2
    assert "protect" in result.stderr
    assert "admin_token" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "key", "reason"),
    [
        ('protect = "everything"', "protect", "'admin' or 'all'"),
        ('protect = "all"', "protect", "needs an admin_token"),
        ('admin_token = ""', "admin_token", "visible ASCII"),
        ('admin_token = "two words"', "admin_token", "visible ASCII"),
        ('allowed_paths = ["/does/not/exist"]', "allowed_paths", "not a directory"),
        ("kv_cache_fraction = 0", "kv_cache_fraction", "greater than 0"),
        ("kv_cache_fraction = 1.5", "kv_cache_fraction", "less than or equal to 1"),
        ("kv_block_size = 0", "kv_block_size", "greater than or equal to 1"),
        ('kv_cache_bytes = "heaps"', "kv_cache_bytes", "not a size"),
        ('prefix_caching = "sometimes"', "prefix_caching", "boolean"),
    ],
)
def test_bad_access_and_kv_keys_name_file_key_and_reason(
    tmp_path: Path, content: str, key: str, reason: str
) -> None:
    file = tmp_path / "neuron.toml"
    file.write_text(content + "\n")
    with pytest.raises(ConfigError) as info:
        load_neuron_config(file)
    assert str(file) in info.value.message
    assert key in info.value.message
    assert reason in info.value.message


def test_access_keys_from_the_file_flags_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "neuron.toml"
    file.write_text(f'allowed_paths = ["{tmp_path}"]\nadmin_token = "s3cret"\nprotect = "all"\n')
    config = load_neuron_config(file)
    assert (config.allowed_paths, config.protect) == ([tmp_path], "all")
    assert load_neuron_config().protect == "admin"

    seen: list[NeuronConfig] = []
    monkeypatch.setattr(neuron_cli, "run", lambda config, **_: seen.append(config))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flags = ["serve", "--allowed-path", str(tmp_path / "a"), "--allowed-path", str(tmp_path / "b")]
    env = {"NEURON_ADMIN_TOKEN": "t0ken", "NEURON_PROTECT": "all"}
    result = CliRunner().invoke(neuron_cli.app, flags, env=env)
    assert result.exit_code == 0, result.output
    env = {"NEURON_ALLOWED_PATHS": f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}"}
    result = CliRunner().invoke(neuron_cli.app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    assert [c.allowed_paths for c in seen] == [[tmp_path / "a", tmp_path / "b"]] * 2
    assert [c.protect for c in seen] == ["all", "admin"]


def test_kv_cache_keys_from_the_file_flags_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = load_neuron_config()
    assert (default.kv_cache_bytes, default.kv_cache_fraction) == (None, 0.5)
    assert (default.kv_block_size, default.prefix_caching) == (16, True)
    file = tmp_path / "neuron.toml"
    file.write_text(
        'kv_cache_bytes = "1GiB"\nkv_cache_fraction = 0.25\nkv_block_size = 32\n'
        "prefix_caching = false\n"
    )
    config = load_neuron_config(file)
    assert (config.kv_cache_bytes, config.kv_cache_fraction) == (1024**3, 0.25)
    assert (config.kv_block_size, config.prefix_caching) == (32, False)

    seen: list[NeuronConfig] = []
    monkeypatch.setattr(neuron_cli, "run", lambda config, **_: seen.append(config))
    flags = ["serve", "--config", str(file), "--kv-cache-bytes", "2GiB", "--kv-block-size", "8"]
    flags += ["--kv-cache-fraction", "0.75", "--prefix-caching"]
    result = CliRunner().invoke(neuron_cli.app, flags)
    assert result.exit_code == 0, result.output
    env = {
        "NEURON_KV_CACHE_BYTES": "512MiB",
        "NEURON_KV_CACHE_FRACTION": "0.9",
        "NEURON_KV_BLOCK_SIZE": "64",
        "NEURON_PREFIX_CACHING": "false",
    }
    result = CliRunner().invoke(neuron_cli.app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    got = [(c.kv_cache_bytes, c.kv_cache_fraction, c.kv_block_size, c.prefix_caching) for c in seen]
    assert got == [(2 * 1024**3, 0.75, 8, True), (512 * 1024**2, 0.9, 64, False)]


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--kv-cache-fraction", "0"], "kv_cache_fraction"),
        (["--kv-cache-fraction", "1.5"], "kv_cache_fraction"),
        (["--kv-block-size", "0"], "kv_block_size"),
    ],
)
def test_bad_kv_cache_flags_are_refused_naming_the_key(
    flags: list[str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neuron_cli, "run", lambda config, **_: pytest.fail("ran"))
    result = CliRunner().invoke(neuron_cli.app, ["serve", *flags])
    assert result.exit_code == 2
    assert f"flags/environment: {key}: " in result.output
