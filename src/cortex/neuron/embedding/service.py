"""Embeddings on the neuron: request → token ids → vectors → the OpenAI reply.

Every check a client can fail (the model serves embeddings, ``dimensions`` within its
width, token ids in its vocabulary, each input within its context) comes before the
engine sees the request, as a 400 in the OpenAI envelope. Texts are tokenized as
sentence-transformers tokenizes them (the tokenizer's special tokens added: ``[CLS] …
[SEP]``, an appended end token); token ids are taken as given. Tokenizing and encoding the
reply run off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import torch

from cortex.errors import ContextLengthExceeded, EngineFailure, InvalidRequest
from cortex.neuron.embedding.harness import EmbeddingHarness
from cortex.neuron.loaded import LoadedModel
from cortex.neuron.models import ModelRegistry
from cortex.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage


class EmbeddingsService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def create(self, request: EmbeddingRequest) -> EmbeddingList:
        """The reply; cancelling this coroutine drops the request at the engine."""
        model = await self.registry.acquire(request.model, "embedding")
        harness = model.harness
        if not isinstance(harness, EmbeddingHarness):  # acquire checked the record's type
            raise EngineFailure(f"The model {request.model!r} has no embedding runner")
        if request.dimensions is not None and request.dimensions > harness.width:
            raise InvalidRequest(
                f"dimensions: {request.dimensions} is more than this model's "
                f"{harness.width} dimensions",
                param="dimensions",
            )
        harness.check_room()
        with model.session():
            ids = await asyncio.to_thread(token_ids, model, harness.vocab_size, request)
            vectors = await harness.embed(ids, request.dimensions)
        data = await asyncio.to_thread(_project, vectors, request.encoding_format)
        tokens = sum(len(row) for row in ids)
        return EmbeddingList(
            data=data,
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )


def token_ids(model: LoadedModel, vocab_size: int, request: EmbeddingRequest) -> list[list[int]]:
    """Each input as token ids, checked against the vocabulary and the context (blocking)."""
    inputs = request.inputs
    if isinstance(inputs[0], str):
        encoded: Any = model.tokenizer(inputs, add_special_tokens=True)["input_ids"]
        ids = [list(row) for row in encoded]
    else:
        ids = inputs
        for i, row in enumerate(ids):
            outside = next((t for t in row if t >= vocab_size), None)
            if outside is not None:
                raise InvalidRequest(
                    f"input: {_which(i, len(ids))}token id {outside} is not in this model's "
                    f"vocabulary of {vocab_size}",
                    param="input",
                )
    context = model.weights.context_length
    for i, row in enumerate(ids):
        if not row:  # a text the tokenizer made nothing of, without special tokens
            raise InvalidRequest(f"input: {_which(i, len(ids))}has no tokens", param="input")
        if len(row) > context:
            raise ContextLengthExceeded(
                f"input: {_which(i, len(ids))}has {len(row)} tokens; this model takes at most "
                f"{context} tokens per input. Shorten it or split it",
                param="input",
                extra={"prompt_tokens": len(row), "context_length": context},
            )
    return ids


def _which(index: int, count: int) -> str:
    return f"item {index} " if count > 1 else ""


def _project(vectors: torch.Tensor, encoding_format: str) -> list[Embedding]:
    """``vectors`` [N, D] float32 as OpenAI's data: floats, or base64 of little-endian
    float32 bytes (what the openai SDK decodes)."""
    if encoding_format == "base64":
        rows = vectors.numpy().astype("<f4", copy=False)
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        encoded = vectors.tolist()
    return [Embedding(index=i, embedding=value) for i, value in enumerate(encoded)]
