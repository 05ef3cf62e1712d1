"""The gateway's control-plane client for neurons: status, load, unload, defrag.

Not the hot path (requests are relayed by ``proxy`` over ``upstream``); this uses
httpx and turns every failure into a ``CortexError`` the fleet can act on.

Every call to a neuron carries its ``token`` (``[[neurons]] token``) as
``Authorization: Bearer``: these calls, and the relayed ones (``relay_headers``), so a
neuron with ``protect = "all"`` serves the gateway. A client's own credentials are never
relayed: a relayed request has these headers and no others.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from cortex import sse
from cortex.errors import (
    BadUpstream,
    CortexError,
    InsufficientMemory,
    ModelLoadFailed,
    NeuronUnavailable,
    SourceNotFound,
    UpstreamTimeout,
)
from cortex.gateway.state import NodeState
from cortex.protocol.lifecycle import AvailableModel, LoadProgress, ModelRecord, NodeStatus
from cortex.protocol.openai import error_from_body

ProgressCallback = Callable[[LoadProgress], None]


class NeuronClient:
    def __init__(
        self,
        *,
        poll_timeout: float,
        load_timeout: float,
        tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        """``tls``: endpoint → the context for that https:// neuron (``cortex.tls``)."""
        self._poll_timeout = poll_timeout
        self._load_timeout = load_timeout
        limits = httpx.Limits(max_keepalive_connections=32)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(poll_timeout, connect=min(poll_timeout, 5.0)),
            limits=limits,
            mounts={
                endpoint: httpx.AsyncHTTPTransport(verify=context, limits=limits)
                for endpoint, context in (tls or {}).items()
            },
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def node(self, node: NodeState) -> NodeStatus:
        data = await self._call(node, "GET", "/node", timeout=self._poll_timeout)
        return NodeStatus.model_validate(data)

    async def available(self, node: NodeState) -> list[AvailableModel]:
        data = await self._call(node, "GET", "/models", timeout=max(self._poll_timeout, 10.0))
        return [AvailableModel.model_validate(item) for item in data.get("available", [])]

    async def unload(self, node: NodeState, model: str, *, force: bool = False) -> None:
        body = {"model": model, "force": force}
        await self._call(node, "POST", "/models/unload", json_body=body, timeout=self._load_timeout)

    async def sleep(self, node: NodeState, model: str) -> None:
        """Park ``model``'s weights in the node's host memory (its engine's sleep mode)."""
        body = {"model": model}
        await self._call(node, "POST", "/models/sleep", json_body=body, timeout=self._load_timeout)

    async def wake(self, node: NodeState, model: str) -> ModelRecord:
        body = {"model": model}
        data = await self._call(
            node, "POST", "/models/wake", json_body=body, timeout=self._load_timeout
        )
        return ModelRecord.model_validate(data)

    async def defrag(self, node: NodeState) -> int:
        data = await self._call(node, "POST", "/admin/defrag", timeout=60.0)
        return int(data.get("freed_bytes", 0))

    async def load(
        self,
        node: NodeState,
        model: str,
        source: str,
        progress: ProgressCallback | None = None,
        *,
        options: Mapping[str, Any] | None = None,
    ) -> ModelRecord:
        """Load and wait until ready, relaying the neuron's progress events.

        ``options``: the profile's load fields that are set (``kv_cache_bytes``, ``engine``,
        ``tp``, ``quant``; ``ModelProfile.load_options``); what is unset the neuron decides.
        """
        headers = {**self._auth(node), "Accept": "text/event-stream"}
        body: dict[str, Any] = {"model": model, "source": source, **(options or {})}
        url = f"{node.endpoint}/models/load"
        timeout = httpx.Timeout(self._load_timeout, connect=5.0)
        try:
            async with self._http.stream(
                "POST",
                url,
                json=body,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _load_error(node, response.status_code, response.content)
                decoder = sse.Decoder()
                async for piece in response.aiter_bytes():
                    for event in decoder.feed(piece):
                        if event.name == "progress" and progress is not None:
                            progress(LoadProgress.model_validate_json(event.data))
                        elif event.name == "record":
                            return ModelRecord.model_validate_json(event.data)
                        elif event.name == "error":
                            status = _json(event.data).get("status")
                            raise _load_error(
                                node, status if isinstance(status, int) else 503, event.data
                            )
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"Node {node.name} did not finish loading {model!r} within {self._load_timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise NeuronUnavailable(
                f"Node {node.name} failed while loading {model!r}: {exc}"
            ) from None
        except ValidationError as exc:
            raise BadUpstream(
                f"Node {node.name} sent a load event that is not valid: {exc.errors()[0]['msg']}"
            ) from None
        raise ModelLoadFailed(f"Node {node.name} ended the load of {model!r} without a result")

    async def _call(
        self,
        node: NodeState,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        timeout: float,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                f"{node.endpoint}{path}",
                json=json_body,
                headers=self._auth(node),
                timeout=timeout,
            )
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"Node {node.name} did not answer {path} within {timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise NeuronUnavailable(f"Node {node.name} is unreachable: {exc}") from None
        if response.status_code >= 400:
            raise _error_from(node, response.status_code, response.content)
        return _json(response.content)

    @staticmethod
    def _auth(node: NodeState) -> dict[str, str]:
        return {"Authorization": f"Bearer {node.token}"} if node.token else {}


@functools.cache
def relay_headers(token: str | None) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of a JSON request relayed to a neuron with ``token``: built once per
    token, not per request."""
    headers = ((b"content-type", b"application/json"),)
    if token is None:
        return headers
    return (*headers, (b"authorization", b"Bearer " + token.encode()))


def _json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_from(node: NodeState, status: int, body: bytes) -> CortexError:
    """A neuron's control-plane error, said as the fleet acts on it: it does not fit (507),
    the source is missing (404), the node is unwell (502-504), else the operation failed."""
    error = error_from_body(status, body)
    reason = f"Node {node.name}: {error.message}"
    if isinstance(error, InsufficientMemory):
        extra: dict[str, object] = {
            k: error.extra[k] for k in ("needed_bytes", "free_bytes") if k in error.extra
        }
        return InsufficientMemory(reason, extra=extra)
    if status == 404:
        return SourceNotFound(reason)
    if status in (502, 503, 504):
        return NeuronUnavailable(reason)
    return ModelLoadFailed(reason)


def _load_error(node: NodeState, status: int, body: bytes) -> CortexError:
    """A failed load is a 503 with the neuron's reason, except "does not fit" (507),
    which the fleet answers by evicting more or placing elsewhere."""
    error = _error_from(node, status, body)
    if isinstance(error, InsufficientMemory | NeuronUnavailable):
        return error
    return ModelLoadFailed(error.message)
