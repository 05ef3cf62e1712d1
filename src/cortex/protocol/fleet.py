"""Gateway ⇄ operator shapes: the fleet view (``GET /fleet``) and fleet actions.

What ``cortex status`` renders and ``cortex load/unload/pin`` send. Data shapes only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cortex.protocol.lifecycle import DeviceInfo, ModelRecord, ModelType

_SHAPE = ConfigDict(extra="ignore")
_REQUEST = ConfigDict(extra="forbid", strict=True)

CatalogueState = Literal["ready", "sleeping", "loading", "unloading", "failed", "available"]


class NodeView(BaseModel):
    """One neuron as the gateway sees it."""

    model_config = _SHAPE
    name: str
    endpoint: str
    up: bool
    last_seen: float | None = None
    error: str | None = None
    version: str | None = None
    engine: str | None = None
    devices: list[DeviceInfo] = Field(default_factory=list)
    models: list[ModelRecord] = Field(default_factory=list)
    eviction_cycles: int = 0


class ModelPlacement(BaseModel):
    """One model of the catalogue: where it is, and what its profile says."""

    model_config = _SHAPE
    id: str
    state: CatalogueState
    nodes: list[str] = Field(default_factory=list)  # where it is loaded (any state)
    placeable_on: list[str] = Field(default_factory=list)  # where it may be loaded
    profile: bool = False
    pinned: bool = False
    priority: int = 0
    aliases: list[str] = Field(default_factory=list)
    # What it serves: "chat" (chat, Responses, Messages, completions) or "embedding"; as its
    # profile says, else as a neuron that holds or has it reports.
    type: ModelType = "chat"


class FleetProgress(BaseModel):
    """One SSE ``progress`` event of ``POST /fleet/load``."""

    model_config = _SHAPE
    model: str
    node: str
    stage: str  # placing, evicting, resolving, checking, loading, ready
    message: str
    needed_bytes: int | None = None


class LoadInProgress(BaseModel):
    model_config = _SHAPE
    model: str
    node: str
    started_at: float
    evicting: list[str] = Field(default_factory=list)


class FleetView(BaseModel):
    model_config = _SHAPE
    nodes: list[NodeView]
    models: list[ModelPlacement]
    loads: list[LoadInProgress] = Field(default_factory=list)
    strategy: str = "lru"


class FleetLoadRequest(BaseModel):
    model_config = _REQUEST
    model: str = Field(min_length=1)
    node: str | None = None


class FleetUnloadRequest(BaseModel):
    model_config = _REQUEST
    model: str = Field(min_length=1)
    node: str | None = None  # None: everywhere it is loaded
    force: bool = False


class FleetPinRequest(BaseModel):
    model_config = _REQUEST
    model: str = Field(min_length=1)
    pinned: bool = True


class FleetActionResult(BaseModel):
    model_config = _SHAPE
    model: str
    nodes: list[str]
    state: CatalogueState | Literal["unloaded"]
    message: str | None = None
