"""Neuron ⇄ gateway lifecycle shapes: node status, model records, load/unload requests.

The contract between the two programs; both sides import only this module to speak
about nodes and models. Data shapes only, no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cortex.protocol.openai import ChatMessage, Tool

ModelState = Literal["loading", "ready", "sleeping", "unloading", "failed"]
# What a model serves: text generation (chat, responses, completions) or embeddings.
ModelType = Literal["chat", "embedding"]
# Which engine runs a model: "auto" picks vLLM where it can run the model, else transformers.
EngineName = Literal["auto", "vllm", "transformers"]

_REQUEST = ConfigDict(extra="forbid", strict=True)
_SHAPE = ConfigDict(extra="ignore")

# A model id is also a folder's name under a model dir, so it keeps to a file name's limit
# (NAME_MAX); a source may be a path, so it keeps to PATH_MAX, with each part a file name.
MAX_NAME = 255
MAX_SOURCE = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(value: str) -> str:
    found = _CONTROL.search(value)
    if found is not None:
        raise ValueError(f"must not contain control characters (found {found.group()!r})")
    return value


def _path_parts(value: str) -> str:
    if any(len(part) > MAX_NAME for part in value.split("/")):
        raise ValueError(f"every part of a path must be at most {MAX_NAME} characters")
    return value


ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_printable)]
"""A model id (or a source named by it): what a name may be before it reaches a filesystem."""
SourceName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_SOURCE),
    AfterValidator(_printable),
    AfterValidator(_path_parts),
]


class DeviceInfo(BaseModel):
    model_config = _SHAPE
    index: int
    kind: Literal["cuda", "cpu"]
    name: str
    memory_total: int
    memory_free: int
    memory_used_by_models: int = 0
    memory_budget: int | None = None


class Capabilities(BaseModel):
    model_config = _SHAPE
    tools: bool = False
    reasoning: bool = False
    # The syntax the model writes them in, detected at load: "hermes", "qwen3_coder", "glm",
    # "harmony", "llama_json", "json_list", "mistral", "deepseek", "kimi", "pythonic" for
    # calls; "think", "mistral", "harmony" for reasoning; "none" where it has none.
    tool_format: str = "none"
    reasoning_format: str = "none"


class ModelRecord(BaseModel):
    model_config = _SHAPE
    id: str
    state: ModelState
    source: str
    type: ModelType = "chat"
    path: str | None = None
    devices: list[str] = Field(default_factory=list)
    memory_bytes: int = 0
    context_length: int | None = None
    dtype: str | None = None
    loaded_at: float | None = None
    last_used_at: float | None = None
    in_flight: int = 0
    queued: int = 0
    queue_wait: float = 0.0  # seconds the oldest queued request has waited
    tp: int = 1
    quant: str | None = None
    engine: str | None = None  # "vllm" or "transformers", once it is decided
    # Its engine can park it in host memory (POST /models/sleep): vLLM's sleep mode on CUDA.
    can_sleep: bool = False
    # The paged KV cache (as of the engine's last step): its memory (also counted in
    # memory_bytes), its blocks of kv_block_size tokens, those live sequences use, and
    # the share of prompt tokens found in the prefix cache since load.
    kv_cache_bytes: int = 0
    kv_block_size: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    prefix_cache_hit_ratio: float = 0.0
    capabilities: Capabilities = Field(default_factory=Capabilities)
    error: str | None = None


class NodeStatus(BaseModel):
    model_config = _SHAPE
    name: str
    version: str
    engine: str
    devices: list[DeviceInfo]
    models: list[ModelRecord]
    # The host's available memory, where a sleeping model's weights go (None: not reported).
    host_memory_free: int | None = None
    # Bytes per second this node reads weights to its device: timed over its own loads,
    # else as configured (neuron.toml load_speed); None: neither (placement learns it).
    load_speed: float | None = None


class AvailableModel(BaseModel):
    """A model this node could load: from a model dir or the local HF cache."""

    model_config = _SHAPE
    id: str
    source: str
    path: str
    size_bytes: int | None = None
    state: ModelState | Literal["available"] = "available"
    type: ModelType = "chat"  # from its folder: sentence-transformers files make "embedding"


class ModelsView(BaseModel):
    model_config = _SHAPE
    loaded: list[ModelRecord]
    available: list[AvailableModel]


class LoadRequest(BaseModel):
    model_config = _REQUEST
    model: ModelName
    source: SourceName | None = None
    device: str | None = None
    # The engine for this load; unset: the neuron's ``engine``.
    engine: EngineName | None = None
    # GPUs of this host for tensor parallelism, and a quantization vLLM supports for the
    # checkpoint ("awq", "gptq", "fp8", "bitsandbytes", …); both need the vLLM engine.
    tp: int = Field(default=1, ge=1, le=64)
    quant: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_printable)] | None = (
        None
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    # Memory for the model's KV cache; unset: the neuron's kv_cache_bytes, else its
    # kv_cache_fraction of what the device budget has left after the weights.
    kv_cache_bytes: int | None = Field(default=None, ge=0)


class UnloadRequest(BaseModel):
    model_config = _REQUEST
    model: ModelName
    force: bool = False


class SleepRequest(BaseModel):
    """``POST /models/sleep`` and ``/models/wake``."""

    model_config = _REQUEST
    model: ModelName


class LoadProgress(BaseModel):
    """One SSE ``progress`` event of a streamed load."""

    model_config = _SHAPE
    model: str
    stage: Literal["resolving", "checking", "loading", "ready"]
    message: str
    needed_bytes: int | None = None


class DefragResult(BaseModel):
    model_config = _SHAPE
    freed_bytes: int
    devices: list[DeviceInfo]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: ModelName
    # Where the tokenizer lives when the model is not loaded here (a profile's source).
    source: SourceName | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeResult(BaseModel):
    model_config = _SHAPE
    count: int
