"""Text completions on the neuron (``/v1/completions``): prompts → generation → the legacy
``text_completion`` reply.

Like ``ChatService`` it reaches the engine only through ``prepare.run`` (so the ``Harness``
contract, the same on every engine) and validates everything before a stream starts: every
error a client can cause is an HTTP 400 in the OpenAI envelope. No chat template and no
reasoning or tool-call parsing: the prompt is the text (or the token ids) the client sent,
behind the model's BOS where its tokenizer adds one, and the reply is the raw text the model
wrote, less stop strings and its end-of-sequence token. With a ``suffix`` the prompt is laid
out in the model's own fill-in-the-middle tokens (``neuron.fim``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from cortex import sse
from cortex.errors import CortexError, EngineFailure, InvalidRequest
from cortex.neuron import fim, prepare
from cortex.neuron.chat_service import collect
from cortex.neuron.engine.base import InferenceRequest
from cortex.neuron.loaded import LoadedModel
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prepare import Generation
from cortex.neuron.wire.completion_projection import (
    CompletionChunkProjector,
    CompletionCollector,
    LegacyLogprobs,
    completion,
)
from cortex.neuron.wire.events import Error
from cortex.neuron.wire.output import TextOutput
from cortex.protocol.completions import Completion, CompletionRequest
from cortex.protocol.openai import error_body


@dataclass(slots=True)
class PreparedCompletion:
    generation: Generation
    request: CompletionRequest
    completion_id: str
    created: int
    echoes: list[str]  # per choice: its prompt's text when echoed, else ""
    prompt_tokens: list[int]  # per prompt


class CompletionsService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def prepare(self, request: CompletionRequest) -> PreparedCompletion:
        model = await self.registry.acquire(request.model)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        generation, echoes, sizes = await asyncio.to_thread(
            prepare_completion, request, model, completion_id
        )
        return PreparedCompletion(
            generation, request, completion_id, int(time.time()), echoes, sizes
        )

    async def complete(self, prepared: PreparedCompletion) -> Completion:
        """The whole reply; cancelling this coroutine cancels the generation."""
        asked = prepared.request.logprobs is not None
        collectors = [
            CompletionCollector(echo, LegacyLogprobs(len(echo)) if asked else None)
            for echo in prepared.echoes
        ]
        finished = await collect(prepared.generation, collectors)
        return completion(
            prepared.completion_id,
            prepared.request.model,
            prepared.created,
            finished,
            sum(prepared.prompt_tokens),
        )

    async def stream(self, prepared: PreparedCompletion) -> AsyncIterator[bytes]:
        """SSE lines; submits on first iteration, so an unread stream costs nothing."""
        request = prepared.request
        options = request.stream_options
        n = request.n
        projector = CompletionChunkProjector(
            prepared.completion_id,
            request.model,
            prepared.created,
            echoes=prepared.echoes,
            prompt_tokens=[prepared.prompt_tokens[i // n] for i in range(len(prepared.echoes))],
            total_prompt_tokens=sum(prepared.prompt_tokens),
            logprobs=request.logprobs is not None,
            include_usage=bool(options and options.include_usage),
            continuous_usage=bool(options and options.continuous_usage_stats),
        )
        yield projector.start()
        generation = prepared.generation
        try:
            async with aclosing(prepare.run(generation)) as events:
                async for index, event in events:
                    if isinstance(event, Error):
                        yield sse.encode(error_body(EngineFailure(event.message))) + sse.DONE
                        return
                    yield projector.project(index, event, generation.completion_tokens[index])
        except CortexError as exc:  # the engine's queue filled up as the choices went in
            yield sse.encode(error_body(exc)) + sse.DONE


def prepare_completion(
    request: CompletionRequest, model: LoadedModel, request_id: str
) -> tuple[Generation, list[str], list[int]]:
    """Check one request and make its generation: one inference per choice, prompt-major;
    with each choice's echoed text and each prompt's size (blocking: run it off the loop)."""
    model.harness.check_room()  # a full queue is a 429 before anything streams
    if request.echo and request.logprobs is not None:
        raise InvalidRequest(
            "echo with logprobs is not supported: the neuron's engines do not score prompt "
            "tokens; ask for echo or for logprobs",
            param="echo",
        )
    tokenizer = model.tokenizer
    suffix = request.fill_in
    layout = _fim_tokens(tokenizer) if suffix is not None else None
    text_of = prepare.token_text(tokenizer) if request.logprobs is not None else None
    inferences: list[InferenceRequest] = []
    echoes: list[str] = []
    sizes: list[int] = []
    for prompt in request.prompts:
        ids, echo = _prompt_ids(tokenizer, prompt, layout, suffix)
        params = prepare.sampling_params(request, model, len(ids), what="prompt")
        eos = model.weights.eos_token_ids | (layout.ends if layout is not None else frozenset())
        for j in range(request.n):
            inferences.append(
                InferenceRequest(
                    request_id=f"{request_id}-{len(inferences)}",
                    prompt_ids=ids,
                    # Each choice samples on its own: seeded, n different and reproducible.
                    params=replace(params, seed=params.seed + j)
                    if params.seed is not None and j
                    else params,
                    output=TextOutput(tokenizer, request.stop_strings),
                    eos_token_ids=eos,
                    token_text=text_of,
                )
            )
            echoes.append(echo if request.echo else "")
        sizes.append(len(ids))
    return Generation(model, inferences, [0] * len(inferences)), echoes, sizes


def _fim_tokens(tokenizer: Any) -> fim.FimTokens:
    found = fim.detect(tokenizer)
    if found is None:
        raise InvalidRequest(
            "suffix needs a model trained to fill in the middle, and this model has no "
            f"fill-in-the-middle tokens in its vocabulary (looked for {fim.known_markers()})",
            param="suffix",
        )
    return found


def _prompt_ids(
    tokenizer: Any, prompt: str | list[int], layout: fim.FimTokens | None, suffix: str | None
) -> tuple[list[int], str]:
    """One prompt's ids and the text an echo shows of it (the prompt as sent)."""
    if isinstance(prompt, list):
        if layout is not None:
            raise InvalidRequest(
                "suffix needs text prompts: token-id prompts are sent as they are",
                param="suffix",
            )
        vocab = len(tokenizer)
        if max(prompt) >= vocab:
            raise InvalidRequest(
                f"prompt: token id {max(prompt)} is not a token of this model (its vocabulary "
                f"has {vocab})",
                param="prompt",
            )
        return prompt, str(tokenizer.decode(prompt, skip_special_tokens=False))
    if layout is not None and suffix is not None:
        return fim.fim_prompt_ids(tokenizer, layout, prompt, suffix), prompt
    ids = fim.text_prompt_ids(tokenizer, prompt) if prompt else []
    if not ids:
        raise InvalidRequest("prompt: is empty; there is nothing to complete", param="prompt")
    return ids, prompt
