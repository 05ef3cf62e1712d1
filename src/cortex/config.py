"""Config files and flags → validated models.

Owns the neuron's ``neuron.toml`` (and, later, the gateway's files): parsing sizes
("64MiB") and durations ("2s"), merging flags/environment over the file, and turning
any mistake into a ``ConfigError`` that names the file, the key and the reason.
"""

from __future__ import annotations

import hashlib
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cortex.errors import ConfigError
from cortex.tls import PemPath, TlsCert, TlsKey, check_neuron_tls

C = TypeVar("C", bound=BaseModel)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$")


def parse_size(value: object) -> int:
    """Bytes from ``1234``, ``"64MiB"``, ``"1.5GB"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB or 20GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a size; use a number of bytes or e.g. 64MiB, 20GiB, 1.5GB")


def parse_duration(value: object) -> float:
    """Seconds from ``2``, ``"2s"``, ``"500ms"``, ``"5m"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s or 500ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration; use e.g. 2s, 500ms, 5m")


def parse_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → (host, port); ``[::1]:80`` style for IPv6."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host.strip("[]"), port


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_token(value: str | None) -> str | None:
    """A bearer token as an HTTP header carries it: visible ASCII, no spaces."""
    if value is not None and not re.fullmatch(r"[!-~]+", value):
        raise ValueError("a token is one or more visible ASCII characters, without spaces")
    return value


class NeuronConfig(BaseModel):
    """Everything ``neuron serve`` needs; every key is also a flag and a NEURON_ variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default_factory=socket.gethostname, min_length=1)
    listen: str = "0.0.0.0:13131"
    model_dirs: list[Path] = Field(default_factory=list)
    # Folders a source named by path may also resolve to (a model folder, or a folder of
    # them); besides these, the model dirs and the local HF cache, every source is a 404.
    allowed_paths: list[Path] = Field(default_factory=list)
    preload: list[str] = Field(default_factory=list)
    memory_budget: Size | None = None
    admin_token: str | None = None
    # Which routes need admin_token: "admin" (lifecycle and admin routes) or "all" (every
    # route but /health); "all" without a token is refused.
    protect: Literal["admin", "all"] = "admin"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_request_bytes: Size = 32 * 1024**2
    load_wait_timeout: Duration = 600.0
    unload_drain_timeout: Duration = 30.0
    # On SIGTERM/SIGINT: how long requests in flight may take to finish before they are cut.
    shutdown_grace: Duration = 30.0
    cpu_threads: int | None = Field(default=None, ge=1)
    # Where chat completions put reasoning: both fields (default), or only one of them.
    reasoning_field: Literal["both", "reasoning_content", "reasoning"] = "both"
    # How many finished Responses a neuron keeps for previous_response_id (in memory).
    response_store: int = Field(default=1000, ge=0)
    # Continuous batching, per model: sequences decoded together, sequences allowed to
    # wait (past that: 429 with Retry-After), prompt tokens prefilled in one step.
    max_num_seqs: int = Field(default=32, ge=1)
    max_queue: int = Field(default=256, ge=0)
    max_prefill_tokens: int = Field(default=8192, ge=1)
    # Whether a request may bring its own chat template (chat_template_kwargs.chat_template).
    # Off: such a request is a 400. On: it renders in a sandbox bounded in time and work.
    allow_client_chat_template: bool = False
    tls_cert: TlsCert | None = None  # HTTPS: a PEM certificate chain and its key
    tls_key: TlsKey = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("model_dirs", "allowed_paths")
    @classmethod
    def _check_model_dirs(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.expanduser().is_dir():
                raise ValueError(f"{path} is not a directory")
        return [path.expanduser() for path in value]

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: str | None) -> str | None:
        return check_token(value)

    @field_validator("protect")
    @classmethod
    def _check_protect(cls, value: str, info: ValidationInfo) -> str:
        if value == "all" and not info.data.get("admin_token"):
            raise ValueError('protect = "all" needs an admin_token (every route asks for it)')
        return value

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None


def _raise_first(exc: ValidationError, file: str, from_file: set[str]) -> None:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    top = str(error["loc"][0]) if error["loc"] else ""
    reason = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    where = file if top in from_file else "flags/environment"
    raise ConfigError(reason, file=where, key=key)


def load_neuron_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None
) -> NeuronConfig:
    """The file's values, then every non-None override (flags, NEURON_ variables)."""
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    from_file = set(data)
    for key, value in (overrides or {}).items():
        if value is not None and value != [] and value != ():
            data[key] = value
            from_file.discard(key)
    try:
        return NeuronConfig.model_validate(data)
    except ValidationError as exc:
        _raise_first(exc, str(path) if path else "flags/environment", from_file)
        raise  # unreachable: _raise_first always raises


# --- gateway: cortex.toml and models.toml ---------------------------------------------


class GatewaySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    poll_interval: Duration = 2.0
    # An idle deadline: a neuron silent this long (before its answer's head, or between two
    # reads of it) fails the request with 504, or the dialect's error event mid-stream.
    request_timeout: Duration = 600.0
    load_timeout: Duration = 600.0
    max_request_bytes: Size = 32 * 1024**2
    # On SIGTERM/SIGINT: how long requests in flight may take to finish before they are cut.
    shutdown_grace: Duration = 30.0
    # The HTTP server's own limits (gateway.http_limits): a client slower or larger than
    # these gets 408 / 431 and a close.
    header_timeout: Duration = Field(default=10.0, gt=0)  # first byte to end of head
    body_timeout: Duration = Field(default=30.0, gt=0)  # longest wait for more body bytes
    max_header_bytes: Size = Field(default=64 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    # HTTPS on the API and metrics listeners: a PEM certificate chain and its key.
    tls_cert: TlsCert | None = None
    tls_key: TlsKey = None

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("poll_interval")
    @classmethod
    def _check_poll(cls, value: float) -> float:
        if value < 0.05:
            raise ValueError("poll_interval must be at least 50ms")
        return value


class EvictionSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["lru", "priority"] = "lru"
    # After this many eviction cycles on a node, ask it to defrag; 0 never asks.
    defrag_after_cycles: int = Field(default=50, ge=0)


class NeuronEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    endpoint: str
    token: str | None = None
    # https:// only: verified against ca_file, else the system's CAs; or not at all when
    # tls_verify = false is written out.
    ca_file: PemPath | None = None
    tls_verify: bool = True

    _tls = field_validator("ca_file", "tls_verify")(check_neuron_tls)
    _token = field_validator("token")(check_token)  # the neuron's admin_token

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        parse_listen(rest.rstrip("/"))
        return value.rstrip("/")


class KeyEntry(BaseModel):
    """One gateway API key (``[[keys]]``): the secret itself or its sha256, never both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[^\x00-\x1f\x7f]+$")  # metrics and logs show it
    key: str | None = Field(default=None, min_length=1, repr=False)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = None  # glob patterns over model ids and aliases; None: all
    admin: bool = False  # may use /fleet/load, /fleet/unload, /fleet/pin
    requests_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of key and key_sha256")
        return self

    @property
    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.encode()).digest()
        return bytes.fromhex(self.key_sha256 or "")


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[KeyEntry] = Field(default_factory=list)


def read_keys_file(path: Path) -> list[KeyEntry]:
    """A ``keys_file``'s entries (``gateway.auth`` checks names and secrets are unique)."""
    return _validate(KeysFile, _read_toml(path), str(path)).keys


class CortexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    eviction: EvictionSection = Field(default_factory=EvictionSection)
    neurons: list[NeuronEntry] = Field(default_factory=list)
    keys: list[KeyEntry] = Field(default_factory=list)
    keys_file: Path | None = None  # relative to cortex.toml; reloaded on SIGHUP

    @property
    def has_keys(self) -> bool:  # else the gateway is open, as it was before keys
        return bool(self.keys) or self.keys_file is not None

    @field_validator("neurons")
    @classmethod
    def _unique_names(cls, value: list[NeuronEntry]) -> list[NeuronEntry]:
        names = [n.name for n in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"neuron name {name!r} is used twice")
        return value


class ModelProfile(BaseModel):
    """Where a model may live and how it is treated under pressure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    source: str | None = None  # HF repo id (local cache) or a path; defaults to id
    neurons: list[str] = Field(default_factory=list)  # allowed, in order; empty = any
    priority: int = 0
    pinned: bool = False
    quant: str | None = None
    tp: int = Field(default=1, ge=1)
    memory: Size | None = None  # estimate used for placement before the neuron knows better

    @property
    def load_source(self) -> str:
        return self.source or self.id


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[ModelProfile] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, value: list[ModelProfile]) -> list[ModelProfile]:
        ids = [m.id for m in value]
        for model_id in ids:
            if ids.count(model_id) > 1:
                raise ValueError(f"model id {model_id!r} is used twice")
        return value

    def profile(self, model_id: str) -> ModelProfile | None:
        for profile in self.models:
            if profile.id == model_id:
                return profile
        return None


def _validate(kind: type[C], data: dict[str, Any], file: str, base: Path | None = None) -> C:
    try:  # relative paths in the file (tls_cert, ca_file…) are from its folder
        return kind.model_validate(data, context={"base": base})
    except ValidationError as exc:
        _raise_first(exc, file, set(data))
        raise


def load_gateway_config(
    path: Path | None, models_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[CortexConfig, ModelsConfig]:
    """cortex.toml (+ flag overrides of [gateway] keys) and models.toml, cross-checked.

    Without ``models_path``, a ``models.toml`` beside cortex.toml is used if present.
    """
    data = _read_toml(path) if path is not None else {}
    gateway = dict(data.get("gateway") or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            gateway[key] = value
    if gateway:
        data["gateway"] = gateway
    where = str(path) if path else "flags/environment"
    cortex = _validate(CortexConfig, data, where, path.parent if path else None)
    if cortex.keys_file is not None:
        keys_file = (path.parent if path else Path()) / cortex.keys_file.expanduser()
        cortex = cortex.model_copy(update={"keys_file": keys_file})
    if models_path is None and path is not None and (path.parent / "models.toml").is_file():
        models_path = path.parent / "models.toml"
    models = (
        _validate(ModelsConfig, _read_toml(models_path), str(models_path))
        if models_path is not None
        else ModelsConfig()
    )
    known = {n.name for n in cortex.neurons}
    for i, profile in enumerate(models.models):
        for name in profile.neurons:
            if name not in known:
                raise ConfigError(
                    f"neuron {name!r} is not in cortex.toml's [[neurons]]",
                    file=str(models_path),
                    key=f"models.{i}.neurons",
                )
    for alias, target in models.aliases.items():
        if not target:
            key = f"aliases.{alias}"
            raise ConfigError("alias target is empty", file=str(models_path), key=key)
    return cortex, models
