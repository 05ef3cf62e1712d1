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

from cortex import sse
from cortex.neuron.wire.events import (
    Done,
    InferenceEvent,
    Reasoning,
    Text,
    TokenLogprob,
    ToolCall,
)
from cortex.protocol.openai import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    OutputToolCall,
    usage,
)

ReasoningField = Literal["both", "reasoning_content", "reasoning"]


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


def logprob_entry(event: TokenLogprob) -> dict[str, Any]:
    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    entry = item(event.token, event.logprob)
    entry["top_logprobs"] = [item(t, lp) for t, lp in event.top]
    return entry


@dataclass(slots=True)
class ChatCollector:
    """Accumulates one choice of a non-streaming response."""

    reasoning_field: ReasoningField = "both"
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None

    def add(self, event: InferenceEvent) -> None:
        if isinstance(event, Text):
            self.text.append(event.text)
        elif isinstance(event, Reasoning):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCall):
            self.tool_calls.append(event)
        elif isinstance(event, TokenLogprob):
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.append(logprob_entry(event))

    def choice(self, index: int, done: Done) -> Choice:
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
        return Choice(
            index=index,
            message=message,
            finish_reason=client_finish_reason(done, bool(calls)),
            stop_reason=done.stop_reason,
            logprobs={"content": self.logprobs} if self.logprobs is not None else None,
        )


def completion(
    completion_id: str, model: str, created: int, choices: list[tuple[ChatCollector, Done]]
) -> ChatCompletion:
    """The whole response; usage counts the prompt once and every choice's tokens."""
    prompt = choices[0][1].prompt_tokens
    generated = sum(done.completion_tokens for _, done in choices)
    reasoning = sum(done.reasoning_tokens for _, done in choices)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=[collector.choice(i, done) for i, (collector, done) in enumerate(choices)],
        usage=usage(prompt, generated, reasoning),
    )


class ChunkProjector:
    """Events of every choice → SSE lines of ``chat.completion.chunk`` objects."""

    __slots__ = (
        "_base", "_calls", "_continuous", "_done", "_generated", "_include_usage", "_logprobs",
        "_n", "_prompt", "_reasoning", "_reasoning_field",
    )  # fmt: skip

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
        n: int = 1,
    ) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._reasoning_field = reasoning_field
        self._n = n
        self._calls = [0] * n
        self._logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self._done = 0
        self._generated = 0
        self._reasoning = 0
        # With continuous usage every chunk says how many tokens so far (vLLM's option);
        # the first one is how a translating gateway learns the prompt's size up front.
        self._continuous = continuous_usage
        self._prompt = prompt_tokens

    def start(self) -> bytes:
        return b"".join(
            self._chunk(i, {"role": "assistant", "content": ""}, tokens=0) for i in range(self._n)
        )

    def project(self, index: int, event: InferenceEvent, tokens: int = 0) -> bytes:
        if isinstance(event, Text):
            return self._chunk(index, {"content": event.text}, tokens=tokens)
        if isinstance(event, Reasoning):
            fields = _reasoning_fields(event.text, self._reasoning_field)
            return self._chunk(index, fields, tokens=tokens)
        if isinstance(event, ToolCall):
            self._calls[index] += 1
            head = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            arguments = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk(index, {"tool_calls": [head]}, tokens=tokens) + self._chunk(
                index, {"tool_calls": [arguments]}, tokens=tokens
            )
        if isinstance(event, TokenLogprob):
            self._logprobs[index].append(logprob_entry(event))
            return b""
        if isinstance(event, Done):
            out = self._chunk(
                index,
                {},
                finish_reason=client_finish_reason(event, self._calls[index] > 0),
                stop_reason=event.stop_reason,
                tokens=event.completion_tokens,
            )
            self._done += 1
            self._generated += event.completion_tokens
            self._reasoning += event.reasoning_tokens
            if self._done < self._n:
                return out
            if self._include_usage:
                payload = dict(self._base, choices=[])
                final = usage(event.prompt_tokens, self._generated, self._reasoning)
                payload["usage"] = final.model_dump(exclude_none=True)
                out += sse.encode(payload)
            return out + sse.DONE
        return b""

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        *,
        stop_reason: str | int | None = None,
        tokens: int = 0,
    ) -> bytes:
        # No per-chunk "usage": null: the gateway relays these bytes to clients that did
        # not ask for usage, and only the final usage chunk (choices: []) carries it.
        payload = dict(self._base)
        pending = self._logprobs[index]
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": {"content": pending} if pending else None,
            "finish_reason": finish_reason,
        }
        if pending:
            self._logprobs[index] = []
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason  # vLLM's: the stop string or token that hit
        payload["choices"] = [choice]
        if self._continuous:
            payload["usage"] = {
                "prompt_tokens": self._prompt,
                "completion_tokens": tokens,
                "total_tokens": self._prompt + tokens,
            }
        return sse.encode(payload)
