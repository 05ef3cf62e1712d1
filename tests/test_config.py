"""neuron.toml: defaults, overrides, and refusals that name file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import load_gateway_config, load_neuron_config, parse_duration, parse_size
from cortex.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 * 1024**2), ("1.5GB", 1_500_000_000), ("20GiB", 20 * 1024**3), (1234, 1234)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("5m", 300.0), (3, 3.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_defaults_and_file_values(tmp_path: Path) -> None:
    file = tmp_path / "neuron.toml"
    file.write_text(f'name = "beast"\nmodel_dirs = ["{tmp_path}"]\nmemory_budget = "64MiB"\n')
    config = load_neuron_config(file)
    assert config.name == "beast"
    assert config.port == 13131
    assert config.model_dirs == [tmp_path]
    assert config.memory_budget == 64 * 1024**2


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    file = tmp_path / "neuron.toml"
    file.write_text('listen = "0.0.0.0:1"\n')
    config = load_neuron_config(file, {"listen": "127.0.0.1:9999", "name": None})
    assert (config.host, config.port) == ("127.0.0.1", 9999)


def test_client_chat_templates_are_off_unless_allowed(tmp_path: Path) -> None:
    assert load_neuron_config().allow_client_chat_template is False
    file = tmp_path / "neuron.toml"
    file.write_text("allow_client_chat_template = true\n")
    assert load_neuron_config(file).allow_client_chat_template is True
    overridden = load_neuron_config(file, {"allow_client_chat_template": False})
    assert overridden.allow_client_chat_template is False


@pytest.mark.parametrize(
    ("content", "key", "reason"),
    [
        ('memory_budget = "lots"', "memory_budget", "not a size"),
        ('listen = "nohost"', "listen", "HOST:PORT"),
        ('colour = "blue"', "colour", "unknown key"),
        ('model_dirs = ["/does/not/exist"]', "model_dirs", "not a directory"),
        ("name = ", None, "not valid TOML"),
    ],
)
def test_bad_file_names_file_key_and_reason(
    tmp_path: Path, content: str, key: str | None, reason: str
) -> None:
    file = tmp_path / "neuron.toml"
    file.write_text(content + "\n")
    with pytest.raises(ConfigError) as info:
        load_neuron_config(file)
    assert str(file) in info.value.message
    assert reason in info.value.message
    if key is not None:
        assert key in info.value.message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_neuron_config(tmp_path / "nope.toml")


CORTEX_TOML = """
[gateway]
poll_interval = "500ms"
[eviction]
strategy = "priority"
[[neurons]]
name = "beast"
endpoint = "http://beast.internal:13131"
"""


def test_gateway_files_with_models_beside_them(tmp_path: Path) -> None:
    (tmp_path / "cortex.toml").write_text(CORTEX_TOML)
    (tmp_path / "models.toml").write_text(
        '[[models]]\nid = "qwen3-8b"\nsource = "Qwen/Qwen3-8B"\nneurons = ["beast"]\n'
        'memory = "17GiB"\n[aliases]\n"claude-sonnet-4-5" = "qwen3-8b"\n'
    )
    cortex, models = load_gateway_config(tmp_path / "cortex.toml", None, {"listen": "127.0.0.1:9"})
    assert cortex.gateway.poll_interval == 0.5
    assert cortex.gateway.listen == "127.0.0.1:9"
    assert cortex.eviction.strategy == "priority"
    profile = models.profile("qwen3-8b")
    assert profile is not None
    assert profile.memory == 17 * 1024**3
    assert models.aliases == {"claude-sonnet-4-5": "qwen3-8b"}


@pytest.mark.parametrize(
    ("cortex_toml", "models_toml", "file", "key", "reason"),
    [
        (CORTEX_TOML + 'colour = "red"\n', "", "cortex.toml", "colour", "unknown key"),
        ('[eviction]\nstrategy = "random"\n', "", "cortex.toml", "eviction.strategy", "lru"),
        ('[[neurons]]\nname = "x"\nendpoint = "ftp://x"\n', "", "cortex.toml", "endpoint", "http"),
        (CORTEX_TOML, '[[models]]\nid = "m"\nneurons = ["ghost"]\n', "models.toml",
         "models.0.neurons", "ghost"),
        (CORTEX_TOML, '[[models]]\nid = "m"\npriority = "high"\n', "models.toml",
         "models.0.priority", "integer"),
    ],
)  # fmt: skip
def test_bad_gateway_files_name_file_key_and_reason(
    tmp_path: Path, cortex_toml: str, models_toml: str, file: str, key: str, reason: str
) -> None:
    (tmp_path / "cortex.toml").write_text(cortex_toml)
    (tmp_path / "models.toml").write_text(models_toml)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(tmp_path / "cortex.toml")
    assert file in info.value.message
    assert key in info.value.message
    assert reason in info.value.message
