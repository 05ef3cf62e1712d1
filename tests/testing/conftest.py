"""Session-wide tiny models for the cortex.testing tests, each built once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cortex.testing import cached_model
from cortex.testing.tokenizer import save_tokenizer


@pytest.fixture(scope="session")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fresh cache per run (unlike tests/conftest.py's shared one), so these tests always
    # exercise the build itself.
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def untrained_dir(fresh_cache: Path) -> Path:
    return cached_model(trained=False, cache_dir=fresh_cache)


@pytest.fixture(scope="session")
def trained_dir(fresh_cache: Path) -> Path:
    return cached_model(trained=True, cache_dir=fresh_cache)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Only the tokenizer files: much cheaper than a model folder.
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    # Reloaded from disk, as serving code gets it.
    loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not isinstance(loaded, PreTrainedTokenizerFast):
        raise TypeError(f"expected a tokenizers-backed tokenizer, got {type(loaded).__name__}")
    return loaded
