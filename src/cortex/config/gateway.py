"""``cortex.toml`` (with its ``[[keys]]`` and key file) and ``models.toml``, cross-checked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cortex.config.values import Duration, Size, check_token, parse_listen, read_toml, validate
from cortex.errors import ConfigError
from cortex.tls import PemPath, TlsCert, TlsKey, check_neuron_tls


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

    # Which idle model makes room: the least recently used; the lowest priority (then lru);
    # or the least requested per byte lately (gdsf: requests decayed with a half-life of an
    # hour, over the memory the model holds). See docs/placement.md.
    strategy: Literal["lru", "priority", "gdsf"] = "lru"
    # After this many eviction cycles on a node, ask it to defrag; 0 never asks.
    defrag_after_cycles: int = Field(default=50, ge=0)


class PlacementSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where a model ready nowhere is loaded. first-fit: the first allowed node (in profile,
    # else cortex.toml, order) where it fits, else the first that can evict enough.
    # best-fit: the node where it is ready soonest (its measured load speed) and fits most
    # tightly; else the node whose victims are worth least (the eviction strategy's own
    # measure), then the soonest ready.
    strategy: Literal["first-fit", "best-fit"] = "first-fit"
    # A model whose oldest queued request at a node has waited this long gets another
    # replica on another node (placed as any load is), up to max_replicas copies; 0: never.
    # Idle replicas go as any idle model does, when the room is wanted.
    replica_after: Duration = 30.0
    max_replicas: int = Field(default=4, ge=1)


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
    return validate(KeysFile, read_toml(path), str(path)).keys


class CortexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    eviction: EvictionSection = Field(default_factory=EvictionSection)
    placement: PlacementSection = Field(default_factory=PlacementSection)
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
    # The engine its loads ask for ("auto", "vllm", "transformers"); unset: the neuron's.
    engine: Literal["auto", "vllm", "transformers"] | None = None
    memory: Size | None = None  # estimate used for placement before the neuron knows better
    # What it serves, for /v1/models and to refuse the wrong endpoint before a load; unset:
    # as the neurons that hold or have it report ("chat" until one does).
    type: Literal["chat", "embedding"] | None = None
    # Memory for its KV cache, sent with each load; unset: the neuron's own choice
    # (its kv_cache_bytes, else kv_cache_fraction of what is left after the weights).
    kv_cache_bytes: Size | None = None

    @property
    def load_source(self) -> str:
        return self.source or self.id

    def load_options(self) -> dict[str, Any]:
        """What its loads ask the neuron for beyond the defaults (only what is set)."""
        options: dict[str, Any] = {}
        if self.kv_cache_bytes is not None:
            options["kv_cache_bytes"] = int(self.kv_cache_bytes)
        if self.engine is not None:
            options["engine"] = self.engine
        if self.tp != 1:
            options["tp"] = self.tp
        if self.quant is not None:
            options["quant"] = self.quant
        return options


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


def load_gateway_config(
    path: Path | None, models_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[CortexConfig, ModelsConfig]:
    """cortex.toml (+ flag overrides of [gateway] keys) and models.toml, cross-checked.

    Without ``models_path``, a ``models.toml`` beside cortex.toml is used if present.
    """
    data = read_toml(path) if path is not None else {}
    gateway = dict(data.get("gateway") or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            gateway[key] = value
    if gateway:
        data["gateway"] = gateway
    where = str(path) if path else "flags/environment"
    cortex = validate(CortexConfig, data, where, path.parent if path else None)
    if cortex.keys_file is not None:
        keys_file = (path.parent if path else Path()) / cortex.keys_file.expanduser()
        cortex = cortex.model_copy(update={"keys_file": keys_file})
    if models_path is None and path is not None and (path.parent / "models.toml").is_file():
        models_path = path.parent / "models.toml"
    models = (
        validate(ModelsConfig, read_toml(models_path), str(models_path))
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
