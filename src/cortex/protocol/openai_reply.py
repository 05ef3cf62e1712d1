"""What the gateway reads of a neuron's OpenAI answer: stream chunks, usage, error envelopes.

Lenient where ``protocol.openai`` is strict: these shapes are read from a neuron, not
validated from a client, so unknown fields are ignored and every field has a default;
the gateway parses each event once into them (``gateway.dialects.relay``).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

# Parsed once per streamed event: pydantic's string cache would keep every chunk's id (one
# new string per request, ~1.5 MB of the gateway's memory before the cache is full), so
# only the keys, a fixed set, are cached.
_SHAPE = ConfigDict(extra="allow", cache_strings="keys")
_READ = ConfigDict(extra="ignore", cache_strings="keys")  # what the gateway reads, no more


class TokenCounts(BaseModel):
    """Usage as either OpenAI dialect reports it: chat (``prompt_tokens``/
    ``completion_tokens``) or Responses (``input_tokens``/``output_tokens``)."""

    model_config = _READ
    prompt: int = Field(0, validation_alias=AliasChoices("prompt_tokens", "input_tokens"))
    completion: int = Field(0, validation_alias=AliasChoices("completion_tokens", "output_tokens"))


class ChunkFunction(BaseModel):
    model_config = _READ
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(BaseModel):
    model_config = _READ
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: ChunkFunction = Field(default_factory=ChunkFunction)


class Delta(BaseModel):
    model_config = _READ
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ChunkToolCall] | None = None

    @property
    def reasoning_text(self) -> str | None:
        """The reasoning, from whichever field carries it (neurons may send both)."""
        return self.reasoning_content if self.reasoning_content is not None else self.reasoning

    @property
    def has_output(self) -> bool:
        """Generated output: text, reasoning or a tool call (not the opening role delta)."""
        return bool(self.content or self.reasoning_text or self.tool_calls)


class ChunkChoice(BaseModel):
    model_config = _READ
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM's: the stop string or token that ended it
    logprobs: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    """An OpenAI error envelope's ``error``; extra figures (``prompt_tokens``,
    ``context_length``, ``needed_bytes`` …) stay in ``model_extra``."""

    model_config = _SHAPE
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ChatCompletionChunk(BaseModel):
    """One ``chat.completion.chunk`` of a stream, or the error event that ends one."""

    model_config = _READ
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: TokenCounts | None = None
    error: ErrorDetail | None = None

    @property
    def has_output(self) -> bool:
        return any(choice.delta.has_output for choice in self.choices)

    @property
    def is_usage_only(self) -> bool:
        """The chunk after the last finish that carries only the stream's usage."""
        return not self.choices and self.usage is not None


class ErrorEnvelope(BaseModel):
    model_config = _READ
    error: ErrorDetail | None = None


class TextChunkChoice(BaseModel):
    model_config = _READ
    index: int = 0
    text: str | None = None
    finish_reason: str | None = None


class TextCompletionChunk(BaseModel):
    """One ``text_completion`` chunk of a ``/v1/completions`` stream, or its error event."""

    model_config = _READ
    choices: list[TextChunkChoice] = Field(default_factory=list)
    usage: TokenCounts | None = None
    error: ErrorDetail | None = None

    @property
    def has_output(self) -> bool:
        return any(choice.text for choice in self.choices)

    @property
    def is_usage_only(self) -> bool:
        return not self.choices and self.usage is not None


class Counted(BaseModel):
    """The usage of a whole reply: a ``chat.completion`` or a Responses ``response``."""

    model_config = _READ
    usage: TokenCounts | None = None
