"""Where models come from: folders, names under model dirs, the local HF cache.

Owns resolving a source to a folder (never downloading: the hub is used offline
only), estimating a model's bytes from its safetensors headers before loading, and
listing what this host could load.

The neuron reads only what it was given (``Places``): a source resolves to a folder
under a model dir, an allowed path or the local Hugging Face cache, links and ``..``
followed first; any other folder is a 404 like a missing one, and the message names
nothing outside the configured folders (the same answer whether or not it exists there).

A name the filesystem refuses (too long, a NUL byte, ``~user`` of no such user) is a 400
naming the field; a folder under a root that cannot be read is a 404 with the reason;
weights that do not parse raise ``ValueError`` naming the file (the load then fails with
that reason).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cortex.errors import CortexError, InvalidRequest, SourceNotFound
from cortex.neuron.embedding.spec import read_spec
from cortex.protocol.lifecycle import AvailableModel, ModelRecord, ModelType

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
# What says "no such folder" while resolving, rather than "cannot read it".
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


@dataclass(frozen=True, slots=True)
class Places:
    """Where this neuron may read models: names are looked up under ``model_dirs``; a folder
    named by path must lie under a model dir, an allowed path or the local HF cache."""

    model_dirs: tuple[Path, ...] = ()
    allowed_paths: tuple[Path, ...] = ()

    def roots(self) -> list[Path]:
        """Every place, resolved; those that do not exist are left out."""
        roots = []
        for place in (*self.model_dirs, *self.allowed_paths, hf_cache_root()):
            try:
                roots.append(place.expanduser().resolve(strict=True))
            except _REFUSED:
                continue
        return roots


def hf_cache_root() -> Path:
    """The local Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/…/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def confined(path: Path, roots: Iterable[Path]) -> Path | None:
    """``path`` with its links and ``..`` resolved, if that lies under one of ``roots``
    (resolved); None if it lies elsewhere or does not exist.

    Only a path under a root may say why it cannot be read (an ``OSError`` propagates);
    anywhere else is None whatever the reason, so an answer reveals nothing about the
    file system outside the roots. A name too long for any filesystem still raises."""
    roots = list(roots)
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL):
            raise
        if exc.errno in _ABSENT or not _under(Path(os.path.realpath(path)), roots):
            return None
        raise
    except RuntimeError:  # a symlink loop (pathlib before 3.13)
        if not _under(Path(os.path.realpath(path)), roots):
            return None
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
    return real if _under(real, roots) else None


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or (
        os.sep in source and Path(source).exists()
    )


def resolve(source: str, places: Places, param: str = "source") -> Path:
    """The folder holding ``source`` (resolved: one folder, one path, however it is spelled),
    which lies under one of ``places``.

    Raises SourceNotFound naming the configured places it looked in, or InvalidRequest
    naming ``param`` for a name no filesystem takes."""
    try:
        found = _find(source, places)
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
    dirs = ", ".join(str(d) for d in places.model_dirs) or "none configured"
    raise SourceNotFound(
        f"The source {_shown(source)} is not a model under the neuron's model folders: "
        f"the model dirs ({dirs}), its allowed paths and the local Hugging Face cache "
        "(nothing is downloaded)",
        param=param,
    )


def _find(source: str, places: Places) -> Path | None:
    roots = places.roots()
    candidates = [Path(source).expanduser(), *(d / source for d in places.model_dirs)]
    for candidate in candidates:
        real = confined(candidate, roots)
        if real is not None and is_model_dir(real):
            return real
    snapshot = _hf_cache_snapshot(source)
    return confined(snapshot, roots) if snapshot is not None else None


def same_folder(source: str, record: ModelRecord, places: Places) -> bool:
    """Whether ``source`` names the folder ``record`` was loaded from, however it is spelled."""
    if source == record.source:
        return True
    try:
        return record.path is not None and resolve(source, places) == Path(record.path)
    except CortexError:
        return False


def default_id(source: str, places: Places | None = None) -> str:
    """The id a model gets when only a source is named: a folder's name, else the source.
    With ``places``, a link that leads outside them is not followed (its name is kept)."""
    try:
        if looks_like_path(source):
            path = Path(source).expanduser()
            real = path.resolve() if places is None else confined(path, places.roots())
            return (real or Path(os.path.normpath(path))).name or source
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


def available(places: Places) -> list[AvailableModel]:
    """Models this host could load by name: folders under the model dirs and cached HF repos,
    each only where it resolves under the places (a link out of a model dir is not listed)."""
    roots = places.roots()
    found: dict[str, AvailableModel] = {}
    for model_dir in places.model_dirs:
        for child in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
            if _loadable(child, roots):
                found.setdefault(child.name, _available(child.name, child.name, child))
    for repo_id, path in _hf_cache_models():
        if _loadable(path, roots):
            found.setdefault(repo_id, _available(repo_id, repo_id, path))
    return list(found.values())


def _loadable(path: Path, roots: list[Path]) -> bool:
    try:
        real = confined(path, roots)
        return real is not None and is_model_dir(real)
    except _REFUSED:  # unreadable: not listed
        return False


def _available(model_id: str, source: str, path: Path) -> AvailableModel:
    try:
        size = estimate_bytes(path)
    except (OSError, ValueError):
        size = None
    return AvailableModel(
        id=model_id, source=source, path=str(path), size_bytes=size, type=_model_type(path)
    )


def _model_type(path: Path) -> ModelType:
    try:
        return "chat" if read_spec(path) is None else "embedding"
    except InvalidRequest:  # an embedding model whose modules cortex cannot run
        return "embedding"


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
