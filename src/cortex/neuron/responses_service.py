"""The OpenAI Responses API on the neuron: request → chat form → generation → items.

A Responses request is translated to the chat form (``responses_to_chat``), runs through
the same ``prepare`` as chat completions, and the one event stream is projected into
Responses objects and events (``wire.responses_projection``). Finished responses are kept for
``previous_response_id`` in a bounded in-memory store (``store: false`` keeps nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from cortex.neuron import prepare
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prepare import Generation
from cortex.neuron.responses_to_chat import Conversation, ResponseStore, to_chat
from cortex.neuron.wire.responses_projection import (
    ResponseCollector,
    ResponseStreamProjector,
    new_id,
    response_head,
)
from cortex.protocol.responses import ResponsesRequest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedResponse:
    generation: Generation
    request: ResponsesRequest
    conversation: Conversation
    head: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        """Tell the client which hosted tools it sent that this model cannot run."""
        ignored = self.conversation.ignored_tools
        return {"x-cortex-ignored-tools": ",".join(ignored)} if ignored else {}


class ResponsesService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.store = ResponseStore(registry.config.response_store)

    async def prepare(self, request: ResponsesRequest) -> PreparedResponse:
        history = self.store.history_for(request)  # 404 for an id this neuron never kept
        model = await self.registry.acquire(request.model)
        conversation = to_chat(request, history)
        if conversation.ignored_tools:
            log.info(
                "ignoring hosted tools %s: the model cannot run them", conversation.ignored_tools
            )
        chat = conversation.chat_request(request.model, stream=bool(request.stream))
        response_id = new_id("resp")
        prepared = await asyncio.to_thread(prepare.prepare, chat, model, response_id)
        head = response_head(request, response_id, int(time.time()))
        return PreparedResponse(prepared, request, conversation, head)

    async def complete(self, prepared: PreparedResponse) -> dict[str, Any]:
        collector = ResponseCollector(prepared.head, prepared.conversation.tool_names)
        async with aclosing(prepare.run(prepared.generation)) as events:
            async for _, event in events:
                collector.add(event)
        response = collector.response()
        self._keep(prepared, response)
        return response

    async def stream(self, prepared: PreparedResponse) -> AsyncIterator[bytes]:
        projector = ResponseStreamProjector(prepared.head, prepared.conversation.tool_names)
        yield projector.start()
        async with aclosing(prepare.run(prepared.generation)) as events:
            async for _, event in events:
                yield projector.project(event)
        if projector.response is not None:
            self._keep(prepared, projector.response)

    def _keep(self, prepared: PreparedResponse, response: dict[str, Any]) -> None:
        if prepared.request.store is False or response.get("status") == "failed":
            return
        messages = prepared.conversation.continued(response.get("output", []))
        self.store.put(response["id"], messages)
