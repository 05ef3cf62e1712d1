"""InferenceEvents → OpenAI ``chat.completion`` and ``chat.completion.chunk``.

One projector per request. Streaming chunks are built as dicts and dumped once,
because this runs once per generated token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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


def sse(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n\n"
    )


def client_finish_reason(done: Done) -> str:
    if done.finish_reason in ("stop", "length", "tool_calls"):
        return done.finish_reason
    return "stop"


@dataclass(slots=True)
class ChatCollector:
    """Accumulates a whole reply for a non-streaming response."""

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
        reasoning = "".join(self.reasoning) or None
        calls = [
            OutputToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
            for c in self.tool_calls
        ]
        message = AssistantMessage(
            content="".join(self.text) if (self.text or not calls) else None,
            reasoning_content=reasoning,
            reasoning=reasoning,
            tool_calls=calls or None,
        )
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=model,
            choices=[Choice(message=message, finish_reason=client_finish_reason(done))],
            usage=usage(done.prompt_tokens, done.completion_tokens),
        )


class ChunkProjector:
    """Events → SSE lines of ``chat.completion.chunk`` objects."""

    __slots__ = ("_base", "_include_usage", "_tool_index")

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._tool_index = 0

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def project(self, event: InferenceEvent) -> bytes:
        if isinstance(event, Text):
            return self._chunk({"content": event.text})
        if isinstance(event, Reasoning):
            return self._chunk({"reasoning_content": event.text, "reasoning": event.text})
        if isinstance(event, ToolCall):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": event.arguments},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, Done):
            out = self._chunk({}, finish_reason=client_finish_reason(event))
            if self._include_usage:
                payload = dict(self._base, choices=[])
                payload["usage"] = usage(event.prompt_tokens, event.completion_tokens).model_dump()
                out += sse(payload)
            return out + DONE_LINE
        return b""

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload = dict(self._base)
        # No per-chunk "usage": null: the gateway relays these bytes to clients that did
        # not ask for usage, and only the final usage chunk (choices: []) carries it.
        payload["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        return sse(payload)
