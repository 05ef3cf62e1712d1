"""Which folders are sentence-embedding models, and how their sentence-transformers files
say they pool (``neuron.embedding.spec``); a module cortex cannot run is a 400 at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cortex.config import NeuronConfig
from cortex.errors import InvalidRequest
from cortex.neuron import sources
from cortex.neuron.app import NeuronApp
from cortex.neuron.devices import discover
from cortex.neuron.embedding.spec import EmbeddingSpec, read_spec
from cortex.protocol.lifecycle import LoadRequest


def _folder(tmp_path: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path


def _modules(*kinds: str) -> list[dict[str, str]]:
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
    return [
        {
            "idx": str(i),
            "path": paths.get(k, f"{i}_{k}"),
            "type": f"sentence_transformers.models.{k}",
        }
        for i, k in enumerate(kinds)
    ]


def test_the_fixtures_are_read_as_written(
    embedding_models: dict[str, Path], tiny_model: Path
) -> None:
    assert read_spec(embedding_models["mean"]) == EmbeddingSpec(("mean",), True, 128)
    assert read_spec(embedding_models["cls"]) == EmbeddingSpec(("cls",), False, 128)
    # Its config.json names Qwen3ForCausalLM: the sentence-transformers files decide.
    assert read_spec(embedding_models["lasttoken"]) == EmbeddingSpec(("lasttoken",), True, 128)
    assert read_spec(tiny_model) is None


def test_newer_pooling_configs_and_several_modes(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "modules.json": _modules("Transformer", "Pooling"),
            "1_Pooling/config.json": {"embedding_dimension": 8, "pooling_mode": ["mean", "cls"]},
        },
    )
    # Concatenated in sentence-transformers' order, whatever the file's.
    assert read_spec(folder) == EmbeddingSpec(("cls", "mean"), False, None)


def test_folders_without_modules_pool_as_sentence_transformers_would(tmp_path: Path) -> None:
    encoder = _folder(tmp_path / "encoder", {"config.json": {"architectures": ["BertModel"]}})
    assert read_spec(encoder) == EmbeddingSpec(("mean",), False, None)
    causal = _folder(
        tmp_path / "causal",
        {
            "config.json": {"architectures": ["Qwen3ForCausalLM"]},
            "config_sentence_transformers.json": {},
        },
    )
    assert read_spec(causal) == EmbeddingSpec(("lasttoken",), False, None)
    masked = _folder(tmp_path / "masked", {"config.json": {"architectures": ["BertForMaskedLM"]}})
    assert read_spec(masked) is None


def test_modules_cortex_cannot_run_are_refused_by_name(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "modules.json": _modules("Transformer", "Pooling", "Dense", "Normalize"),
            "1_Pooling/config.json": {"pooling_mode_mean_tokens": True},
        },
    )
    with pytest.raises(InvalidRequest, match="Dense"):
        read_spec(folder)


async def test_loading_a_model_with_a_dense_module_is_a_400(
    tmp_path: Path, embedding_models: dict[str, Path]
) -> None:
    folder = tmp_path / "dense"
    shutil.copytree(embedding_models["mean"], folder)
    (folder / "modules.json").write_text(
        json.dumps(_modules("Transformer", "Pooling", "Dense", "Normalize"))
    )
    app = NeuronApp(NeuronConfig(name="t", allowed_paths=[folder]), discover())
    with pytest.raises(InvalidRequest, match="Dense"):
        await app.registry.load(LoadRequest(model="d", source=str(folder)))
    assert app.registry.records() == []
    await app.registry.aclose()


def test_the_models_a_node_could_load_say_which_are_embedding_models(
    tmp_path: Path, embedding_models: dict[str, Path], tiny_model: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(embedding_models["cls"], root / "embed")
    shutil.copytree(tiny_model, root / "tiny")
    shutil.copytree(embedding_models["mean"], root / "dense")
    (root / "dense" / "modules.json").write_text(json.dumps(_modules("Transformer", "Dense")))
    found = sources.available(sources.Places((root,), ()))
    types = {m.id: m.type for m in found if m.path.startswith(str(root))}
    # One cortex cannot run is still an embedding model: its load says why it is refused.
    assert types == {"embed": "embedding", "tiny": "chat", "dense": "embedding"}
