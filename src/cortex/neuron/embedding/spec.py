"""Whether a model folder is a sentence-embedding model, and how its vectors are made.

Read from the files sentence-transformers saves, so a folder gives the vectors
``SentenceTransformer(folder).encode`` gives:

* ``modules.json`` lists the modules; cortex runs ``Transformer`` (the model in the folder
  itself), ``Pooling`` (its ``config.json``: ``pooling_mode``, or the older
  ``pooling_mode_*_token(s)`` switches, several modes concatenated in sentence-transformers'
  order) and ``Normalize``. Any other module (``Dense``, ``LayerNorm``, …) is refused at load
  with a 400 naming it, rather than served as different vectors.
* ``sentence_bert_config.json``'s ``max_seq_length`` caps the context.
* A folder without ``modules.json`` but with ``config_sentence_transformers.json``, or whose
  ``config.json`` names only bare ``*Model`` architectures (``BertModel``, …), is pooled as
  sentence-transformers pools such a folder: mean pooling (last-token for a ``*ForCausalLM``
  architecture), no normalisation.

Everything else is a generative model (None). Blocking file reads; call off the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from cortex.errors import InvalidRequest

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[PoolingMode, ...] = get_args(PoolingMode)  # the concatenation order
# The older switches of 1_Pooling/config.json, one per mode.
_SWITCHES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_GENERATIVE = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    pooling: tuple[PoolingMode, ...]  # concatenated in this order
    normalize: bool  # L2-normalised (a Normalize module)
    max_seq_length: int | None = None  # tokens an input may have (None: the model's context)


def read_spec(path: Path) -> EmbeddingSpec | None:
    """How the model in ``path`` embeds, or None for a generative model; a 400 for an
    embedding model whose modules cortex cannot run."""
    if (path / "modules.json").is_file():
        return _from_modules(path, _json(path / "modules.json"))
    architectures = _architectures(path)
    causal = bool(architectures) and architectures[0].endswith("ForCausalLM")
    if (path / "config_sentence_transformers.json").is_file():
        return EmbeddingSpec(("lasttoken",) if causal else ("mean",), False, _max_length(path))
    bare = [a for a in architectures if a.endswith("Model")]
    if bare and not any(a.endswith(_GENERATIVE) for a in architectures):
        return EmbeddingSpec(("mean",), False, _max_length(path))
    return None


def _from_modules(path: Path, modules: Any) -> EmbeddingSpec:
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise _refused(path, "its modules.json is not a list of modules")
    pooling: tuple[PoolingMode, ...] | None = None
    normalize = False
    for index, module in enumerate(modules):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = str(module.get("path", ""))
        if kind == "Transformer" and index == 0 and where in ("", "."):
            continue
        if kind == "Pooling" and pooling is None and not normalize:
            pooling = _pooling_modes(path, path / where / "config.json")
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            raise _refused(
                path,
                f"cortex runs a Transformer module in the model's folder, then Pooling and "
                f"Normalize; it cannot run module {index} ({module.get('type')!r} at "
                f"{where!r}) of this model",
            )
    if pooling is None:
        raise _refused(path, "its modules.json has no Pooling module, so no sentence vectors")
    return EmbeddingSpec(pooling, normalize, _max_length(path))


def _pooling_modes(path: Path, config_file: Path) -> tuple[PoolingMode, ...]:
    config = _json(config_file)
    if not isinstance(config, dict):
        raise _refused(path, f"{config_file.relative_to(path)} is missing or not an object")
    named = config.get("pooling_mode")
    if named is not None:
        modes = [named] if isinstance(named, str) else named
        if not isinstance(modes, list) or not modes:
            raise _refused(path, f"pooling_mode {named!r} is not a mode or a list of modes")
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown:
            raise _refused(path, f"unknown pooling mode {unknown[0]!r}")
        return tuple(m for m in POOLING_MODES if m in modes)
    chosen = {mode for key, mode in _SWITCHES.items() if config.get(key) is True}
    # No switch set: sentence-transformers pools by the mean.
    return tuple(m for m in POOLING_MODES if m in chosen) or ("mean",)


def _max_length(path: Path) -> int | None:
    config = _json(path / "sentence_bert_config.json")
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _architectures(path: Path) -> list[str]:
    config = _json(path / "config.json")
    found = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in found if isinstance(a, str)] if isinstance(found, list) else []


def _json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def _refused(path: Path, why: str) -> InvalidRequest:
    return InvalidRequest(f"The embedding model in {path.name} cannot be served: {why}")
