"""build_model's atomic writes, cached_model, and the command line."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cortex.testing import build_model, cache_key, cached_model, default_cache_dir
from cortex.testing.__main__ import main

# Most tests here build a model folder.
pytestmark = pytest.mark.slow


def test_cached_model_reuses_the_folder(fresh_cache: Path, untrained_dir: Path) -> None:
    before = (untrained_dir / "model.safetensors").stat().st_mtime_ns
    assert cached_model(trained=False, cache_dir=fresh_cache) == untrained_dir
    assert (untrained_dir / "model.safetensors").stat().st_mtime_ns == before
    assert untrained_dir.parent == fresh_cache
    assert cache_key(trained=False) in untrained_dir.name


def test_cache_key_depends_on_the_build() -> None:
    keys = {
        cache_key(trained=False),
        cache_key(trained=True),
        cache_key(trained=False, context_length=4096),
    }
    assert len(keys) == 3
    assert cache_key(trained=True) == cache_key(trained=True)


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CORTEX_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "cortex" / "models"


def test_concurrent_builders_share_one_folder(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(cached_model(trained=False, cache_dir=tmp_path, context_length=2048))
        except BaseException as error:  # Re-raised in the main thread below.
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    config = json.loads((results[0] / "config.json").read_text())
    assert config["max_position_embeddings"] == 2048
    # No staging folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [results[0].name]


def test_build_model_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_model(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_build_model_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert build_model(tmp_path / "out", context_length=1024) == tmp_path / "out"
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-model"
    assert main(["build", str(out), "--context-length", "512"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 512
    assert main(["build", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
