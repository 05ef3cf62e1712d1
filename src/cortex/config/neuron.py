"""``neuron.toml``: what ``neuron serve`` needs; every key is also a flag and a NEURON_ variable."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from cortex.config.values import (
    Duration,
    Size,
    Speed,
    check_token,
    parse_listen,
    raise_first,
    read_toml,
)
from cortex.tls import TlsCert, TlsKey


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
    # How fast this machine reads a model's weights to its device ("2GB/s"), reported on
    # /node for the gateway's placement until the neuron has timed a load of its own.
    load_speed: Speed | None = None
    admin_token: str | None = None
    # Which routes need admin_token: "admin" (lifecycle and admin routes) or "all" (every
    # route but /health); "all" without a token is refused.
    protect: Literal["admin", "all"] = "admin"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Which engine runs the models a load does not name one for: "auto" picks vLLM where it
    # is installed and runs the model on its device, else cortex's transformers engine.
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    # vLLM's own engine arguments for every model it runs here (AsyncEngineArgs names,
    # e.g. {enforce_eager = false, gpu_memory_utilization = 0.9}); they win over cortex's.
    vllm_args: dict[str, Any] = Field(default_factory=dict)
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
    # The paged KV cache, per model: its memory is kv_cache_bytes when set (a load's own
    # kv_cache_bytes wins), else kv_cache_fraction of what the device budget has left once
    # the weights are in, never more than max_num_seqs full contexts need. Blocks hold
    # kv_block_size tokens; full blocks are shared by prompts with the same prefix unless
    # prefix_caching is off.
    kv_cache_bytes: Size | None = None
    kv_cache_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    kv_block_size: int = Field(default=16, ge=1, le=1024)
    prefix_caching: bool = True
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


def load_neuron_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None
) -> NeuronConfig:
    """The file's values, then every non-None override (flags, NEURON_ variables)."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    from_file = set(data)
    for key, value in (overrides or {}).items():
        if value is not None and value != [] and value != ():
            data[key] = value
            from_file.discard(key)
    try:
        return NeuronConfig.model_validate(data)
    except ValidationError as exc:
        raise_first(exc, str(path) if path else "flags/environment", from_file)
        raise  # unreachable: _raise_first always raises
