"""Session fixtures: the tiny models, built once per machine into pytest's cache dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cortex.testing import cached_model


@pytest.fixture(scope="session")
def model_cache(pytestconfig: pytest.Config) -> Path:
    cache = pytestconfig.cache
    if cache is None:  # -p no:cacheprovider
        return Path.home() / ".cache" / "cortex" / "test-models"
    return Path(cache.mkdir("cortex-models"))


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> Path:
    return cached_model(trained=False, cache_dir=model_cache)


@pytest.fixture(scope="session")
def trained_model(model_cache: Path) -> Path:
    return cached_model(trained=True, cache_dir=model_cache)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="session")
def fim_model(model_cache: Path) -> Path:
    """The tiny model trained to fill in the middle (``cortex.testing.fim``)."""
    from cortex.testing.fim import cached_fim_model

    return cached_fim_model(cache_dir=model_cache)


@pytest.fixture(scope="session")
def embedding_models(model_cache: Path) -> dict[str, Path]:
    """The tiny sentence-embedding models by pooling: ``mean``, ``cls``, ``lasttoken``."""
    from cortex.testing.embedding import POOLINGS, cached_embedding_model

    return {pooling: cached_embedding_model(pooling, model_cache) for pooling in POOLINGS}
