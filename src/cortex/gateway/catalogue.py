"""The merged catalogue: every model the fleet can serve, and where it is.

A pure projection of a snapshot: models ready or loading anywhere, models a profile
can place, and models neurons report on disk. Cached per snapshot version (and API key:
a key lists only the models it may use), because clients (Zed, Open WebUI) fetch
``/v1/models`` often.
"""

from __future__ import annotations

from typing import Any

import orjson

from cortex.errors import InvalidRequest
from cortex.gateway.auth import Key
from cortex.gateway.state import ModelState, Snapshot
from cortex.protocol.fleet import (
    CatalogueState,
    FleetView,
    LoadInProgress,
    ModelPlacement,
    NodeView,
)
from cortex.protocol.lifecycle import ModelType

_STATE_RANK: dict[str, int] = {"ready": 0, "sleeping": 1, "loading": 2, "unloading": 3, "failed": 4}
_WORD: dict[ModelState, CatalogueState] = {
    ModelState.LOADING: "loading",
    ModelState.READY: "ready",
    ModelState.SLEEPING: "sleeping",
    ModelState.UNLOADING: "unloading",
    ModelState.LEAVING: "unloading",
    ModelState.FAILED: "failed",
}


def placements(snapshot: Snapshot) -> list[ModelPlacement]:
    ids: dict[str, None] = {}
    for profile in snapshot.models.models:
        ids[profile.id] = None
    for node in snapshot.nodes.values():
        for record in node.records:
            ids[record.id] = None
        for item in node.available:
            ids[item.id] = None
    aliases: dict[str, list[str]] = {}
    for alias, target in snapshot.models.aliases.items():
        aliases.setdefault(target, []).append(alias)
    return [_placement(snapshot, model, aliases.get(model, [])) for model in ids]


def _placement(snapshot: Snapshot, model: str, aliases: list[str]) -> ModelPlacement:
    nodes = []
    best: CatalogueState = "available"
    for name, node in snapshot.nodes.items():
        state = node.state(model)
        if state is None or not node.up or node.record(model) is None:
            continue  # listed where an up neuron reports it, not where it is only planned
        nodes.append(name)
        word = _WORD[state]
        if _STATE_RANK.get(word, 9) < _STATE_RANK.get(best, 9):
            best = word
    if model in snapshot.pending and best != "ready":
        best = "loading"  # a load is in flight (its node may not report it yet, or be down)
    profile = snapshot.profile(model)
    return ModelPlacement(
        type=snapshot.model_type(model),
        id=model,
        state=best,
        nodes=nodes,
        placeable_on=snapshot.allowed_nodes(model),
        profile=profile is not None,
        pinned=snapshot.is_pinned(model),
        priority=snapshot.priority(model),
        aliases=aliases,
    )


def check_serves(snapshot: Snapshot, model: str, name: str, wanted: ModelType) -> None:
    """A 400 before any load when ``model`` is known to serve another endpoint."""
    if snapshot.model_type(model) == wanted:
        return
    if wanted == "chat":
        raise InvalidRequest(
            f"The model {name!r} is an embedding model: it serves POST /v1/embeddings only",
            param="model",
        )
    raise InvalidRequest(
        f"The model {name!r} generates text; it does not serve embeddings", param="model"
    )


ENDPOINTS: dict[ModelType, list[str]] = {
    "chat": ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/completions"],
    "embedding": ["/v1/embeddings"],
}


def fleet_view(snapshot: Snapshot) -> FleetView:
    nodes = [
        NodeView(
            name=node.name,
            endpoint=node.endpoint,
            up=node.up,
            last_seen=node.last_seen,
            error=node.error,
            version=node.status.version if node.status else None,
            engine=node.status.engine if node.status else None,
            devices=node.status.devices if node.status else [],
            models=node.records,
            eviction_cycles=node.eviction_cycles,
        )
        for node in snapshot.nodes.values()
    ]
    loads = [
        LoadInProgress(
            model=p.model, node=p.node, started_at=p.started_at, evicting=list(p.victims)
        )
        for p in snapshot.pending.values()
    ]
    return FleetView(
        nodes=nodes, models=placements(snapshot), loads=loads, strategy=snapshot.strategy
    )


class Catalogue:
    """``/v1/models`` bodies, rebuilt only when the snapshot changes."""

    def __init__(self) -> None:
        self._version = -1
        self._openai: dict[Key | None, bytes] = {}  # per key object: a reload makes new ones

    def openai(self, snapshot: Snapshot, key: Key | None = None) -> bytes:
        if snapshot.version != self._version:
            self._openai.clear()
            self._version = snapshot.version
        body = self._openai.get(key)
        if body is None:
            data = [
                {
                    "id": p.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "cortex",
                    "state": p.state,
                    "nodes": p.nodes,
                    "placeable_on": p.placeable_on,
                    "aliases": p.aliases,
                    "type": p.type,
                    "endpoints": ENDPOINTS[p.type],
                }
                for p in placements(snapshot)
                if key is None or key.may_list(p.id, p.aliases)
            ]
            body = self._openai[key] = orjson.dumps({"object": "list", "data": data})
        return body


def anthropic_models(
    snapshot: Snapshot,
    limit: int,
    after_id: str | None = None,
    before_id: str | None = None,
    key: Key | None = None,
) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's shape (sent ``anthropic-version``), one page."""
    ids = [p.id for p in placements(snapshot) if key is None or key.may_list(p.id, p.aliases)]
    if after_id in ids:
        ids = ids[ids.index(after_id) + 1 :]
    elif before_id in ids:
        ids = ids[: ids.index(before_id)][-limit:]
    page = ids[:limit]
    data = [
        {"type": "model", "id": model, "display_name": model, "created_at": _EPOCH}
        for model in page
    ]
    return {
        "data": data,
        "has_more": len(ids) > len(page),
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


_EPOCH = "1970-01-01T00:00:00Z"
