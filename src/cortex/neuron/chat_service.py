"""Chat completions on the neuron: request → generation → projected reply.

``ChatService`` talks to the engine only through ``prepare`` (and so the
``Harness`` contract). It validates everything before a stream starts, so every
error a client can cause is an HTTP error in the OpenAI envelope; what fails after
the first byte is sent as an error event inside the stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cortex import sse
from cortex.errors import EngineFailure
from cortex.neuron import prepare
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prepare import Generation
from cortex.neuron.wire.chat_projection import (
    ChatCollector,
    ChunkProjector,
    ReasoningField,
    completion,
)
from cortex.neuron.wire.events import Done, Error, InferenceEvent
from cortex.protocol.openai import ChatCompletion, ChatCompletionRequest, error_body


@dataclass(slots=True)
class PreparedChat:
    generation: Generation
    request: ChatCompletionRequest
    completion_id: str
    created: int
    reasoning_field: ReasoningField


class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        model = await self.registry.acquire(request.model)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        prepared = await asyncio.to_thread(prepare.prepare, request, model, completion_id)
        field = request.reasoning_field or self.registry.config.reasoning_field
        return PreparedChat(prepared, request, completion_id, int(time.time()), field)

    async def complete(self, chat: PreparedChat) -> ChatCompletion:
        """The whole reply; cancelling this coroutine cancels the generation."""
        field = chat.reasoning_field
        collectors = [ChatCollector(reasoning_field=field) for _ in chat.generation.inferences]
        finished = await collect(chat.generation, collectors)
        return completion(chat.completion_id, chat.request.model, chat.created, finished)

    async def stream(self, chat: PreparedChat) -> AsyncIterator[bytes]:
        """SSE lines; submits on first iteration, so an unread stream costs nothing."""
        options = chat.request.stream_options
        projector = ChunkProjector(
            chat.completion_id,
            chat.request.model,
            chat.created,
            include_usage=bool(options and options.include_usage),
            reasoning_field=chat.reasoning_field,
            continuous_usage=bool(options and options.continuous_usage_stats),
            prompt_tokens=chat.generation.prompt_tokens,
            n=len(chat.generation.inferences),
        )
        yield projector.start()
        async with aclosing(prepare.run(chat.generation)) as events:
            async for index, event in events:
                if isinstance(event, Error):
                    yield sse.encode(error_body(EngineFailure(event.message))) + sse.DONE
                    return
                yield projector.project(index, event, chat.generation.completion_tokens[index])


class Collects(Protocol):
    def add(self, event: InferenceEvent) -> None: ...


C = TypeVar("C", bound=Collects)


async def collect(generation: Generation, collectors: list[C]) -> list[tuple[C, Done]]:
    """Each choice's events into its collector (one per choice), paired with how it ended;
    an engine error fails the whole reply. Cancelling this cancels the generation."""
    dones: list[Done | None] = [None] * len(collectors)
    async with aclosing(prepare.run(generation)) as events:
        async for index, event in events:
            if isinstance(event, Error):
                raise EngineFailure(event.message)
            if isinstance(event, Done):
                dones[index] = event
            else:
                collectors[index].add(event)
    finished = [(c, d) for c, d in zip(collectors, dones, strict=True) if d is not None]
    if len(finished) < len(collectors):
        raise EngineFailure("generation ended without a result")
    return finished
