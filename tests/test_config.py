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
    file.write_text(
        f'name = "beast"\nmodel_dirs = ["{tmp_path}"]\nmemory_budget = "64MiB"\n'
        'load_speed = "2.5GB/s"\n'
    )
    config = load_neuron_config(file)
    assert config.name == "beast"
    assert config.port == 13131
    assert config.model_dirs == [tmp_path]
    assert config.memory_budget == 64 * 1024**2
    assert config.load_speed == 2_500_000_000
    assert load_neuron_config().load_speed is None


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
        ('load_speed = "fast"', "load_speed", "not a speed"),
        ("load_speed = 0", "load_speed", "more than 0"),
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
        'memory = "17GiB"\nkv_cache_bytes = "2GiB"\n[[models]]\nid = "other"\n'
        '[aliases]\n"claude-sonnet-4-5" = "qwen3-8b"\n'
    )
    cortex, models = load_gateway_config(tmp_path / "cortex.toml", None, {"listen": "127.0.0.1:9"})
    assert cortex.gateway.poll_interval == 0.5
    assert cortex.gateway.listen == "127.0.0.1:9"
    assert cortex.eviction.strategy == "priority"
    profile = models.profile("qwen3-8b")
    assert profile is not None
    assert profile.memory == 17 * 1024**3
    assert profile.kv_cache_bytes == 2 * 1024**3
    other = models.profile("other")
    assert other is not None
    assert other.kv_cache_bytes is None  # the neuron's own choice
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
        (CORTEX_TOML, '[[models]]\nid = "m"\nkv_cache_bytes = "lots"\n', "models.toml",
         "models.0.kv_cache_bytes", "not a size"),
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


# --- TLS: [gateway] tls_cert/tls_key, a neuron's tls_cert/tls_key, [[neurons]] ca_file ---


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of PEM files: ca, cert + key (for 127.0.0.1), other-key, junk."""
    import trustme

    root = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(root / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(root / "cert.pem")
    issued.private_key_pem.write_to_path(root / "key.pem")
    ca.issue_cert("other").private_key_pem.write_to_path(root / "other-key.pem")
    (root / "junk.pem").write_text("not a PEM file\n")
    return root


def test_gateway_tls_pair_paths_are_from_cortex_toml(pem: Path) -> None:
    (pem / "cortex.toml").write_text(
        '[gateway]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
        '[[neurons]]\nname = "a"\nendpoint = "https://10.0.0.1:13131"\nca_file = "ca.pem"\n'
        '[[neurons]]\nname = "b"\nendpoint = "https://10.0.0.2:13131"\ntls_verify = false\n'
        '[[neurons]]\nname = "c"\nendpoint = "https://10.0.0.3:13131"\n'
    )
    cortex, _ = load_gateway_config(pem / "cortex.toml")
    assert (cortex.gateway.tls_cert, cortex.gateway.tls_key) == (pem / "cert.pem", pem / "key.pem")
    a, b, c = cortex.neurons
    assert (a.ca_file, a.tls_verify) == (pem / "ca.pem", True)
    assert (b.ca_file, b.tls_verify) == (None, False)
    assert (c.ca_file, c.tls_verify) == (None, True)  # verified against the system's CAs


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ('tls_cert = "cert.pem"', "gateway.tls_key", "set both, or neither"),
        ('tls_key = "key.pem"', "gateway.tls_key", "set both, or neither"),
        ('tls_cert = "nope.pem"\ntls_key = "key.pem"', "gateway.tls_cert", "does not exist"),
        ('tls_cert = "junk.pem"\ntls_key = "key.pem"', "gateway.tls_cert", "no PEM certificate"),
        ('tls_cert = "cert.pem"\ntls_key = "junk.pem"', "gateway.tls_key", "no PEM private key"),
        ('tls_cert = "cert.pem"\ntls_key = "nope.pem"', "gateway.tls_key", "does not exist"),
        ('tls_cert = "cert.pem"\ntls_key = "other-key.pem"', "gateway.tls_key",
         "does not belong to the certificate"),
        ('tls_cert = "key.pem"\ntls_key = "cert.pem"', "gateway.tls_cert", "no PEM certificate"),
    ],
)  # fmt: skip
def test_bad_gateway_tls_pair_names_file_key_and_reason(
    pem: Path, toml: str, key: str, reason: str
) -> None:
    file = pem / f"cortex-{abs(hash(toml))}.toml"
    file.write_text(f"[gateway]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(file)
    assert f"{file}: {key}: " in info.value.message
    assert reason in info.value.message


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        ('endpoint = "http://h:1"\nca_file = "ca.pem"', "ca_file", "https:// endpoints only"),
        ('endpoint = "http://h:1"\ntls_verify = false', "tls_verify", "https:// endpoints only"),
        ('endpoint = "https://h:1"\nca_file = "ca.pem"\ntls_verify = false', "tls_verify",
         "would ignore ca_file"),
        ('endpoint = "https://h:1"\nca_file = "nope.pem"', "ca_file", "does not exist"),
        ('endpoint = "https://h:1"\nca_file = "junk.pem"', "ca_file", "no PEM CA certificate"),
        ('endpoint = "https://h"', "endpoint", "HOST:PORT"),
    ],
)  # fmt: skip
def test_bad_neuron_tls_names_file_key_and_reason(
    pem: Path, entry: str, key: str, reason: str
) -> None:
    file = pem / f"cortex-{abs(hash(entry))}.toml"
    file.write_text(f'[[neurons]]\nname = "a"\n{entry}\n')
    with pytest.raises(ConfigError) as info:
        load_gateway_config(file)
    assert f"{file}: neurons.0.{key}: " in info.value.message
    assert reason in info.value.message


def test_neuron_tls_from_flags_or_file(pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pem)  # the neuron's paths are from the working directory, as model_dirs
    config = load_neuron_config(None, {"tls_cert": "cert.pem", "tls_key": Path("key.pem")})
    assert (config.tls_cert, config.tls_key) == (Path("cert.pem"), Path("key.pem"))
    assert load_neuron_config(None).tls_cert is None
    (pem / "neuron.toml").write_text('tls_key = "key.pem"\n')
    with pytest.raises(ConfigError, match=r"neuron.toml: tls_key: .*set both, or neither"):
        load_neuron_config(pem / "neuron.toml")
    with pytest.raises(ConfigError, match=r"flags/environment: tls_key: .*does not belong"):
        load_neuron_config(None, {"tls_cert": "cert.pem", "tls_key": "other-key.pem"})


def test_keys_and_a_keys_file_beside_cortex_toml(tmp_path: Path) -> None:
    (tmp_path / "cortex.toml").write_text(
        'keys_file = "keys.toml"\n[[keys]]\nname = "laptop"\nkey = "sk-1"\n'
        'models = ["qwen3-*"]\nrequests_per_minute = 120\nmax_concurrent = 8\n'
    )
    cortex, _ = load_gateway_config(tmp_path / "cortex.toml")
    assert cortex.keys_file == tmp_path / "keys.toml"
    assert cortex.keys[0].models == ["qwen3-*"]
    assert cortex.has_keys
    assert not load_gateway_config(None)[0].has_keys


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('name = "a"\n', "exactly one of key and key_sha256"),
        ('name = "a"\nkey = "k"\nkey_sha256 = "' + "0" * 64 + '"\n', "exactly one"),
        ('name = "a"\nkey_sha256 = "abc"\n', "keys.0.key_sha256"),
        ('key = "k"\n', "keys.0.name"),
        ('name = "a"\nkey = "k"\nrequests_per_minute = 0\n', "keys.0.requests_per_minute"),
    ],
)
def test_bad_keys_are_refused_naming_the_key(tmp_path: Path, entry: str, reason: str) -> None:
    (tmp_path / "cortex.toml").write_text("[[keys]]\n" + entry)
    with pytest.raises(ConfigError, match=reason):
        load_gateway_config(tmp_path / "cortex.toml")
