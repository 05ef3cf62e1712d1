"""Where models come from: folders, names under model dirs, the local HF cache.

Owns resolving a source to a folder (never downloading: the hub is used offline
only), estimating a model's bytes from its safetensors headers before loading, and
listing what this host could load.

A name the filesystem refuses (too long, a NUL byte, ``~user`` of no such user) is a 400
naming the field; a folder that cannot be read is a 404 with the reason; weights that do
not parse raise ``ValueError`` naming the file (the load then fails with that reason).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

from cortex.errors import CortexError, InvalidRequest, SourceNotFound
from cortex.protocol.lifecycle import AvailableModel, ModelRecord

# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024**2


# What path operations raise for a name the filesystem refuses.
_REFUSED = (OSError, ValueError, RuntimeError)


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or (
        os.sep in source and Path(source).exists()
    )


def resolve(source: str, model_dirs: list[Path], param: str = "source") -> Path:
    """The folder holding ``source`` (resolved: one folder, one path, however it is spelled).

    Raises SourceNotFound naming where it looked, or InvalidRequest naming ``param`` for a
    name no filesystem takes."""
    try:
        found = _find(source, model_dirs)
    except _REFUSED as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL):
            raise SourceNotFound(
                f"Model source {_shown(source)} cannot be read: {_reason(exc)}", param=param
            ) from None
        raise InvalidRequest(
            f"{param}: {_shown(source)} is not a usable name or path: {_reason(exc)}",
            param=param,
        ) from None
    if found is not None:
        return found
    places = ", ".join(str(d) for d in model_dirs) or "no model dirs configured"
    raise SourceNotFound(
        f"Model source {_shown(source)} was not found: not a model folder, not under the "
        f"model dirs ({places}) and not in the local Hugging Face cache (nothing is "
        "downloaded)",
        param=param,
    )


def _find(source: str, model_dirs: list[Path]) -> Path | None:
    candidate = Path(source).expanduser()
    if is_model_dir(candidate):
        return candidate.resolve()
    for model_dir in model_dirs:
        if is_model_dir(model_dir / source):
            return (model_dir / source).resolve()
    return _hf_cache_snapshot(source)


def same_folder(source: str, record: ModelRecord, model_dirs: list[Path]) -> bool:
    """Whether ``source`` names the folder ``record`` was loaded from, however it is spelled."""
    if source == record.source:
        return True
    try:
        return record.path is not None and resolve(source, model_dirs) == Path(record.path)
    except CortexError:
        return False


def default_id(source: str) -> str:
    """The id a model gets when only a source is named: a folder's name, else the source."""
    try:
        if looks_like_path(source):
            return Path(source).expanduser().resolve().name or source
    except _REFUSED:  # resolving the source says what is wrong with it
        pass
    return source


def _shown(source: str) -> str:
    return repr(source) if len(source) <= 120 else f"{source[:100]!r}… ({len(source)} chars)"


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def estimate_bytes(path: Path, float_bytes: int | None = None) -> int:
    """Bytes the weights take once loaded with floats of ``float_bytes`` each (None: as stored).

    Reads only safetensors headers. Without safetensors, the size of the weight files.
    """
    files = sorted(path.glob("*.safetensors"))
    if not files:
        weights = [*path.glob("*.bin"), *path.glob("*.pt"), *path.glob("*.pth")]
        return sum(f.stat().st_size for f in weights)
    total = 0
    for file in files:
        for dtype, numel in _tensor_sizes(file):
            size = _DTYPE_BYTES.get(dtype, 4)
            if float_bytes is not None and dtype in _FLOAT_DTYPES:
                size = float_bytes
            total += numel * size
    return total


def _tensor_sizes(file: Path) -> list[tuple[str, int]]:
    """Each tensor's dtype and element count; ValueError naming the file if it does not parse."""
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER:
                raise ValueError(f"a header of {length} bytes is not plausible")
            header = json.loads(handle.read(length))
        sizes = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            sizes.append((str(info["dtype"]), numel))
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        # UnicodeDecodeError and json's errors are ValueErrors.
        raise ValueError(f"{file.name} is not a valid safetensors file: {exc}") from None
    return sizes


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    if repo_id.count("/") > 1 or not repo_id.strip():
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: either way not here
        return None
    path = Path(folder)
    return path if is_model_dir(path) else None


def available(model_dirs: list[Path]) -> list[AvailableModel]:
    """Models this host could load: folders under the model dirs and cached HF repos."""
    found: dict[str, AvailableModel] = {}
    for model_dir in model_dirs:
        for child in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
            if is_model_dir(child):
                found.setdefault(child.name, _available(child.name, child.name, child))
    for repo_id, path in _hf_cache_models():
        found.setdefault(repo_id, _available(repo_id, repo_id, path))
    return list(found.values())


def _available(model_id: str, source: str, path: Path) -> AvailableModel:
    try:
        size = estimate_bytes(path)
    except (OSError, ValueError):
        size = None
    return AvailableModel(id=model_id, source=source, path=str(path), size_bytes=size)


def _hf_cache_models() -> list[tuple[str, Path]]:
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache directory: nothing cached
        return []
    models = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda rev: rev.last_modified)
        path = Path(newest.snapshot_path)
        if is_model_dir(path):
            models.append((repo.repo_id, path))
    return models
