"""Building tiny Qwen3 model folders, and a content-addressed cache of them.

This module owns the model architecture and its files (``config.json``,
``generation_config.json``, ``model.safetensors`` plus the tokenizer files), writing a folder
atomically, and ``cached_model``, which builds each distinct model once per machine.
``cortex.testing.families`` reuses the architecture, the atomic writes and the cache for the other
model families. Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

from cortex.testing import train
from cortex.testing.fixtures import FIXTURES
from cortex.testing.tokenizer import (
    ENDOFTEXT,
    IM_END,
    build_tokenizer,
    chat_template,
    corpus_text,
    save_tokenizer,
    token_id,
)

__all__ = [
    "BUILD_VERSION",
    "CACHE_ENV",
    "DEFAULT_CONTEXT_LENGTH",
    "FixtureMismatchError",
    "build_model",
    "cache_key",
    "cached_model",
    "default_cache_dir",
]

# Bump when the build changes in a way the hashed inputs below do not capture.
BUILD_VERSION = 1
DEFAULT_CONTEXT_LENGTH = 65536
CACHE_ENV = "CORTEX_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The tiny Qwen3's dimensions: ~140k parameters, almost half of them the tied embedding."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128


_SHAPE = _Shape()
_SEED = 0


class FixtureMismatchError(RuntimeError):
    """A trained model's greedy reply to a fixture differs from the fixture's reply."""


def qwen3_config(
    *,
    vocab_size: int,
    context_length: int,
    bos_token_id: int | None,
    eos_token_id: int,
    pad_token_id: int | None,
    head_dim: int = _SHAPE.head_dim,
) -> Qwen3Config:
    """The tiny Qwen3 architecture with these special-token ids (the families share it).

    ``head_dim`` 64 makes a model vLLM's CPU attention takes (it refuses 16)."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=_SHAPE.hidden_size,
        num_hidden_layers=_SHAPE.num_hidden_layers,
        num_attention_heads=_SHAPE.num_attention_heads,
        num_key_value_heads=_SHAPE.num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=_SHAPE.intermediate_size,
        tie_word_embeddings=True,
        max_position_embeddings=context_length,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def _model_config(
    tokenizer: PreTrainedTokenizerFast, context_length: int, head_dim: int
) -> Qwen3Config:
    endoftext = token_id(tokenizer, ENDOFTEXT)
    # As in Qwen3: <|endoftext|> doubles as BOS and padding, <|im_end|> ends a turn.
    return qwen3_config(
        vocab_size=len(tokenizer),
        context_length=context_length,
        bos_token_id=endoftext,
        eos_token_id=token_id(tokenizer, IM_END),
        pad_token_id=endoftext,
        head_dim=head_dim,
    )


def _generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    endoftext = token_id(tokenizer, ENDOFTEXT)
    # Both ids end generation, as in Qwen3's generation_config.json. Greedy by default
    # (do_sample=false), so a request that sets no temperature gets the fixture replies.
    return GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=endoftext,
        eos_token_id=[token_id(tokenizer, IM_END), endoftext],
        pad_token_id=endoftext,
        do_sample=False,
    )


def _verify(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    for fixture in FIXTURES.values():
        result = train.greedy_reply(model, tokenizer, fixture)
        if result.text != fixture.reply or not result.ended_with_im_end:
            raise FixtureMismatchError(
                f"fixture {fixture.name!r}: expected {fixture.reply!r}, got {result.text!r} "
                f"(ended with <|im_end|>: {result.ended_with_im_end})"
            )


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    # save_pretrained draws a "Writing model shards" bar on stderr; it is noise in test logs.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def new_model(config: Qwen3Config, generation_config: GenerationConfig) -> Qwen3ForCausalLM:
    """A freshly (and reproducibly) initialised tiny model."""
    torch.manual_seed(_SEED)
    model = Qwen3ForCausalLM(config)  # type: ignore[no-untyped-call,unused-ignore]
    model.generation_config = generation_config
    return model


def save_model(model: Qwen3ForCausalLM, out_dir: Path) -> None:
    """Write the weights and configs into ``out_dir`` (beside the tokenizer files)."""
    model.train(False)
    with _quiet_progress_bars():
        model.save_pretrained(str(out_dir))
    # mkdtemp creates the folder 0700 and transformers writes the weights 0600; a shared cache
    # and model folders mounted into containers need them world-readable.
    out_dir.chmod(0o755)
    for path in out_dir.iterdir():
        path.chmod(0o644)


def _write_model(out_dir: Path, *, trained: bool, context_length: int, head_dim: int) -> None:
    tokenizer = save_tokenizer(out_dir, context_length=context_length)
    config = _model_config(tokenizer, context_length, head_dim)
    model = new_model(config, _generation_config(tokenizer))
    if trained:
        train.train_on_fixtures(model, tokenizer, seed=_SEED)
        # The margin check in training implies this, but generate() is what users run.
        _verify(model, tokenizer)
    save_model(model, out_dir)


def build_model(
    out_dir: Path,
    *,
    trained: bool = False,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    head_dim: int = _SHAPE.head_dim,
) -> Path:
    """Build a tiny Qwen3 model folder at ``out_dir`` and return its path.

    ``trained=False`` gives random (seeded) weights: it loads and generates, but says nothing
    useful. ``trained=True`` fits the weights until greedy decoding reproduces every fixture in
    ``cortex.testing.FIXTURES``. The folder is built beside ``out_dir`` and renamed into place,
    so readers never see a half-written model. ``out_dir`` must not exist or be an empty folder;
    if a concurrent builder wins the rename, its (identical) folder is kept.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    return write_atomically(
        Path(out_dir),
        lambda staging: _write_model(
            staging, trained=trained, context_length=context_length, head_dim=head_dim
        ),
    )


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a staging folder beside ``out_dir``, then rename it into place.

    ``out_dir`` must not exist or be an empty folder; if a concurrent builder wins the rename,
    its folder (which must hold a ``model.safetensors``) is kept.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not an empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(staging)
        try:
            # Atomic on POSIX; replaces out_dir only if it is an empty folder.
            staging.rename(out_dir)
        except OSError:
            if not (out_dir / "model.safetensors").is_file():
                raise
            # Another builder renamed its folder into place first; keep that one.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def default_cache_dir() -> Path:
    """``$CORTEX_CACHE_DIR`` if set, else ``~/.cache/cortex/models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "cortex" / "models"


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def source_digest(parts: object, *texts: str, sources: tuple[Path, ...] = ()) -> str:
    """A digest of ``parts`` (JSON), ``texts``, the corpus, the builder's own source files (this
    package's modules and ``sources``) and the versions of the libraries that produce the files."""
    digest = hashlib.sha256()
    common = {
        "build_version": BUILD_VERSION,
        "shape": dataclasses.asdict(_SHAPE),
        "seed": _SEED,
        "libraries": {
            name: metadata.version(name) for name in ("torch", "transformers", "tokenizers")
        },
    }
    digest.update(json.dumps([common, parts], sort_keys=True, default=_jsonable).encode())
    for text in (corpus_text(), *texts):
        digest.update(hashlib.sha256(text.encode()).digest())
    own = sorted(Path(__file__).resolve().parent.glob("*.py"))
    for source in [*own, *sources]:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:20]


def cache_key(
    *,
    trained: bool,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    head_dim: int = _SHAPE.head_dim,
) -> str:
    """A digest of everything the built folder depends on.

    Covers the corpus, the chat template, the fixtures, the build parameters, the builder's own
    source files, and the versions of the libraries that produce the files; for a trained model
    also the training prompts as the neuron renders them today (``cortex.neuron.prompt``), so a
    change there that alters a prompt rebuilds the model and any other change does not.
    """
    parts: dict[str, object] = {
        "trained": trained,
        "context_length": context_length,
        "head_dim": head_dim,
        "fixtures": [
            [f.name, f.messages, f.tools, f.reply, dict(f.chat_template_kwargs)]
            for f in FIXTURES.values()
        ],
    }
    if trained:
        parts["examples"] = train.fixture_examples(build_tokenizer())
    return source_digest(parts, chat_template())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_model(
    *,
    trained: bool,
    cache_dir: Path | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    head_dim: int = _SHAPE.head_dim,
) -> Path:
    """Return a model folder from the cache, building it only if it is missing.

    Safe across processes: builders of the same key serialise on a lock file, and the folder
    appears by atomic rename, so a path returned here is always complete. Treat it as read-only.
    """
    key = cache_key(trained=trained, context_length=context_length, head_dim=head_dim)
    return cached_folder(
        cache_dir,
        f"{'trained' if trained else 'untrained'}-{key}",
        lambda target: build_model(
            target, trained=trained, context_length=context_length, head_dim=head_dim
        ),
    )


def cached_folder(cache_dir: Path | None, name: str, build: Callable[[Path], Path]) -> Path:
    """``cache_dir / name`` (default ``default_cache_dir()``), running ``build`` on it first if it
    holds no model yet; builders of one name serialise on a lock file."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / name
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{name}.lock"):
        if not (target / "model.safetensors").is_file():
            build(target)
    return target
