"""Chat completions on the neuron: request → prompt → engine → projected reply.

``ChatService`` talks to the engine only through the ``Harness`` contract. It
validates everything before a stream starts, so every error a client can cause is
an HTTP error in the OpenAI envelope; what fails after the first byte is sent as an
error event inside the stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cortex.errors import ContextLengthExceeded, EngineFailure, InvalidRequest
from cortex.neuron.engine.base import InferenceRequest, SamplingParams
from cortex.neuron.models import LoadedModel, ModelRegistry
from cortex.neuron.prompt import render
from cortex.neuron.wire.chat import DONE_LINE, ChatCollector, ChunkProjector, sse
from cortex.neuron.wire.events import Done, Error
from cortex.neuron.wire.output import TextOutput
from cortex.protocol.openai import ChatCompletion, ChatCompletionRequest, error_body


@dataclass(slots=True)
class PreparedChat:
    """A validated request, ready to submit: nothing has reached the engine yet."""

    model: LoadedModel
    request: ChatCompletionRequest
    inference: InferenceRequest
    completion_id: str
    created: int


class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        model = await self.registry.acquire(request.model)
        prompt = await asyncio.to_thread(
            render, model.tokenizer, request.messages, request.tools, request.chat_template_kwargs
        )
        params = sampling_params(request, model, len(prompt.ids))
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        inference = InferenceRequest(
            request_id=completion_id,
            prompt_ids=prompt.ids,
            params=params,
            output=TextOutput(model.tokenizer, request.stop_strings),
            eos_token_ids=model.weights.eos_token_ids,
        )
        return PreparedChat(model, request, inference, completion_id, int(time.time()))

    async def complete(self, chat: PreparedChat) -> ChatCompletion:
        """The whole reply; cancelling this coroutine cancels the generation."""
        collector = ChatCollector()
        with chat.model.session():
            stream = chat.model.harness.submit(chat.inference)
            try:
                async for event in stream:
                    if isinstance(event, Error):
                        raise EngineFailure(event.message)
                    if isinstance(event, Done):
                        return collector.completion(
                            chat.completion_id, chat.request.model, chat.created, event
                        )
                    collector.add(event)
            finally:
                await stream.aclose()
        raise EngineFailure("generation ended without a result")

    async def stream(self, chat: PreparedChat) -> AsyncIterator[bytes]:
        """SSE lines; submits on first iteration, so an unread stream costs nothing."""
        options = chat.request.stream_options
        projector = ChunkProjector(
            chat.completion_id,
            chat.request.model,
            chat.created,
            include_usage=bool(options and options.include_usage),
        )
        with chat.model.session():
            stream = chat.model.harness.submit(chat.inference)
            try:
                yield projector.start()
                async for event in stream:
                    if isinstance(event, Error):
                        yield sse(error_body(EngineFailure(event.message))) + DONE_LINE
                        return
                    yield projector.project(event)
            finally:
                await stream.aclose()


def sampling_params(
    request: ChatCompletionRequest, model: LoadedModel, prompt_tokens: int
) -> SamplingParams:
    """Request fields, else the model's generation_config defaults, else OpenAI's."""
    context = model.weights.context_length
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    # A completion limit past the context is clamped (finish_reason "length"), not refused:
    # agents send large max_tokens and expect an answer.
    room = context - prompt_tokens
    limit = request.completion_limit
    max_tokens = min(limit, room) if limit is not None else room
    defaults: dict[str, Any] = model.weights.sampling_defaults

    def pick(value: Any, key: str, fallback: Any) -> Any:
        return value if value is not None else defaults.get(key, fallback)

    min_tokens = request.min_tokens or 0
    if min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens ({min_tokens}) is larger than max_tokens ({max_tokens})",
            param="min_tokens",
        )
    top_k = int(pick(request.top_k, "top_k", 0))
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(pick(request.temperature, "temperature", 1.0)),
        top_p=float(pick(request.top_p, "top_p", 1.0)),
        top_k=max(top_k, 0),
        min_p=float(pick(request.min_p, "min_p", 0.0)),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=float(pick(request.repetition_penalty, "repetition_penalty", 1.0)),
        min_tokens=min_tokens,
        ignore_eos=request.ignore_eos,
        stop_token_ids=tuple(request.stop_token_ids or ()),
    )
