"""InferenceEvents → OpenAI ``chat.completion`` and ``chat.completion.chunk``.

One projector per request. Streaming chunks are built as dicts and dumped once,
because this runs once per generated token.

Reasoning goes in ``reasoning_content`` (DeepSeek, llama.cpp, SGLang, LiteLLM) and
``reasoning`` (vLLM ≥ 0.11) unless the request or the neuron picks one. A tool call
streams as a first delta carrying ``id``, ``type``, ``name`` and ``arguments: ""``,
then its arguments; ``finish_reason`` is ``tool_calls`` when the turn made calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from cortex.neuron.wire.events import Done, InferenceEvent, Reasoning, Text, ToolCall
from cortex.protocol.openai import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    OutputToolCall,
    usage,
)

DONE_LINE = b"data: [DONE]\n\n"
ReasoningField = Literal["both", "reasoning_content", "reasoning"]


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def client_finish_reason(done: Done, made_calls: bool) -> str:
    if made_calls and done.finish_reason in ("stop", "tool_calls"):
        return "tool_calls"
    if done.finish_reason in ("stop", "length", "tool_calls"):
        return done.finish_reason
    return "stop"


def _reasoning_fields(text: str, which: ReasoningField) -> dict[str, str]:
    if which == "both":
        return {"reasoning_content": text, "reasoning": text}
    return {which: text}


@dataclass(slots=True)
class ChatCollector:
    """Accumulates a whole reply for a non-streaming response."""

    reasoning_field: ReasoningField = "both"
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, event: InferenceEvent) -> None:
        if isinstance(event, Text):
            self.text.append(event.text)
        elif isinstance(event, Reasoning):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCall):
            self.tool_calls.append(event)

    def completion(
        self, completion_id: str, model: str, created: int, done: Done
    ) -> ChatCompletion:
        calls = [
            OutputToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
            for c in self.tool_calls
        ]
        reasoning = "".join(self.reasoning)
        extra = _reasoning_fields(reasoning, self.reasoning_field) if reasoning else {}
        message = AssistantMessage(
            content="".join(self.text) if (self.text or not calls) else None,
            tool_calls=calls or None,
            **extra,
        )
        finish = client_finish_reason(done, bool(calls))
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=model,
            choices=[Choice(message=message, finish_reason=finish, stop_reason=done.stop_reason)],
            usage=usage(done.prompt_tokens, done.completion_tokens),
        )


class ChunkProjector:
    """Events → SSE lines of ``chat.completion.chunk`` objects."""

    __slots__ = ("_base", "_calls", "_continuous", "_include_usage", "_prompt", "_reasoning_field")

    def __init__(
        self,
        completion_id: str,
        model: str,
        created: int,
        include_usage: bool,
        reasoning_field: ReasoningField = "both",
        *,
        continuous_usage: bool = False,
        prompt_tokens: int = 0,
    ) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._reasoning_field = reasoning_field
        self._calls = 0
        # With continuous usage every chunk says how many tokens so far (vLLM's option);
        # the first one is how a translating gateway learns the prompt's size up front.
        self._continuous = continuous_usage
        self._prompt = prompt_tokens

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, completion_tokens=0)

    def project(self, event: InferenceEvent, completion_tokens: int = 0) -> bytes:
        if isinstance(event, Text):
            return self._chunk({"content": event.text}, completion_tokens=completion_tokens)
        if isinstance(event, Reasoning):
            fields = _reasoning_fields(event.text, self._reasoning_field)
            return self._chunk(fields, completion_tokens=completion_tokens)
        if isinstance(event, ToolCall):
            self._calls += 1
            head = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            arguments = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk(
                {"tool_calls": [head]}, completion_tokens=completion_tokens
            ) + self._chunk({"tool_calls": [arguments]}, completion_tokens=completion_tokens)
        if isinstance(event, Done):
            finish = client_finish_reason(event, self._calls > 0)
            out = self._chunk(
                {},
                finish_reason=finish,
                stop_reason=event.stop_reason,
                completion_tokens=event.completion_tokens,
            )
            if self._include_usage:
                payload = dict(self._base, choices=[])
                payload["usage"] = usage(event.prompt_tokens, event.completion_tokens).model_dump()
                out += sse(payload)
            return out + DONE_LINE
        return b""

    def _chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        *,
        stop_reason: str | int | None = None,
        completion_tokens: int = 0,
    ) -> bytes:
        # No per-chunk "usage": null: the gateway relays these bytes to clients that did
        # not ask for usage, and only the final usage chunk (choices: []) carries it.
        payload = dict(self._base)
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason  # vLLM's: the stop string or token that hit
        payload["choices"] = [choice]
        if self._continuous:
            payload["usage"] = {
                "prompt_tokens": self._prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": self._prompt + completion_tokens,
            }
        return sse(payload)
