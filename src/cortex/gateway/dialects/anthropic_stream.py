"""OpenAI ``chat.completion.chunk`` stream → Anthropic Messages stream events.

The ``StreamTranslator``, one per request, is fed typed OpenAI chunks
(``protocol.openai.ChatCompletionChunk``, parsed once by ``gateway.dialects.relay``) and returns
``(event name, data)`` pairs in Anthropic's order::

    message_start, ping,
    (content_block_start, content_block_delta*, [signature_delta], content_block_stop)*,
    message_delta, message_stop

Pure: no I/O, no clock. The dialect (``gateway.dialects.anthropic``) writes each pair with
the SSE codec. The reply pieces it shares with whole replies (ids, stop reasons, thinking
signatures, usage) live in ``gateway.dialects.anthropic_reply``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cortex.errors import CortexError, EngineFailure
from cortex.gateway.dialects.anthropic_reply import (
    message_id,
    stop_reason,
    thinking_signature,
    tool_use_id,
    usage,
)
from cortex.protocol.anthropic import error_body
from cortex.protocol.openai_reply import ChatCompletionChunk, ChunkToolCall, TokenCounts

Event = tuple[str, dict[str, Any]]


class StreamTranslator:
    """Parsed OpenAI chunks in, Anthropic ``(event, data)`` pairs out; one per request.

    Blocks open in the order deltas arrive; a delta of another kind closes the open block.
    A tool call's argument fragments go to the block opened for its OpenAI ``index`` (kept
    open until another block opens, so fragments normally arrive while it is open).
    ``omit_thinking`` (``thinking.display == "omitted"``) keeps thinking blocks but sends
    no thinking text, only the signature.
    """

    def __init__(
        self,
        client_model: str,
        *,
        message_id: str | None = None,
        omit_thinking: bool = False,
        request_id: str | None = None,
    ) -> None:
        self._model = client_model
        self._request_id = request_id  # named in an error event, as in an error answer
        self._id = message_id
        self._omit_thinking = omit_thinking
        self._started = False
        self._done = False
        self._input_tokens = 0
        self._output_tokens = 0
        self._blocks = 0  # blocks opened so far: the next block's index
        self._open: int | None = None  # index of the open block
        self._kind: str | None = None  # its kind: "thinking" | "text" | "tool_use"
        self._thinking = hashlib.sha256()  # text of the open thinking block, for its signature
        self._tools: dict[int, int] = {}  # OpenAI tool-call index → block index
        self._finish: str | None = None
        self._matched: object = None
        self._finished = False  # a finish_reason arrived

    @staticmethod
    def ping() -> Event:
        return "ping", {"type": "ping"}

    def feed(self, chunk: ChatCompletionChunk) -> list[Event]:
        """One OpenAI chunk → the events it implies (often none or one)."""
        if self._done:
            return []
        if chunk.error is not None:
            message = chunk.error.message
            return self.error(EngineFailure(message or "the upstream stream failed"))
        out: list[Event] = []
        self._take_usage(chunk.usage)
        if not self._started:
            out += self._start(chunk.id)
        for choice in chunk.choices[:1]:
            delta = choice.delta
            reasoning = delta.reasoning_text
            if reasoning:
                out += self._thinking_delta(reasoning)
            if delta.content:
                out += self._text_delta(delta.content)
            for call in delta.tool_calls or []:
                out += self._tool_delta(call)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
                self._matched = choice.stop_reason
                self._finished = True
                out += self._close()
        if chunk.is_usage_only and self._finished:
            out += self._end()  # the usage-only chunk after the finish chunk: final figures
        return out

    def finish(self) -> list[Event]:
        """At ``[DONE]`` or the end of the stream: close what is open and end the message."""
        if self._done:
            return []
        out = [] if self._started else self._start(None)
        return out + self._close() + self._end()

    def error(self, err: CortexError) -> list[Event]:
        """An ``error`` event for an upstream that died mid-stream; nothing follows it."""
        self._done = True
        return [("error", error_body(err, self._request_id))]

    # --- internals ------------------------------------------------------------------------

    def _take_usage(self, figures: TokenCounts | None) -> None:
        if figures is not None:
            self._input_tokens, self._output_tokens = figures.prompt, figures.completion

    def _start(self, completion_id: str | None) -> list[Event]:
        self._started = True
        if self._id is None:
            self._id = message_id(completion_id)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self._input_tokens, 0),
        }
        return [("message_start", {"type": "message_start", "message": message}), self.ping()]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[Event]:
        out = self._close()
        self._open, self._kind = self._blocks, kind
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._open, "content_block": block}
        return [*out, ("content_block_start", start)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, out = self._open, []
        if self._kind == "thinking":
            signature = thinking_signature(self._thinking.digest())
            delta = {"type": "signature_delta", "signature": signature}
            out.append(self._delta(index, delta))
        self._open = self._kind = None
        return [*out, ("content_block_stop", {"type": "content_block_stop", "index": index})]

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> Event:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": index,
            "delta": delta,
        }

    def _thinking_delta(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._kind != "thinking":
            out += self._open_block(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._thinking = hashlib.sha256()
        self._thinking.update(text.encode())
        if not self._omit_thinking and self._open is not None:
            out.append(self._delta(self._open, {"type": "thinking_delta", "thinking": text}))
        return out

    def _text_delta(self, text: str) -> list[Event]:
        out = [] if self._kind == "text" else self._open_block("text", {"type": "text", "text": ""})
        if self._open is not None:
            out.append(self._delta(self._open, {"type": "text_delta", "text": text}))
        return out

    def _tool_delta(self, call: ChunkToolCall) -> list[Event]:
        position = call.index if call.index is not None else len(self._tools)
        out: list[Event] = []
        if position not in self._tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_use_id(call.id, position),
                "name": call.function.name or "",
                "input": {},
            }
            out += self._open_block("tool_use", block)
            if self._open is not None:
                self._tools[position] = self._open
        fragment = call.function.arguments
        if fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out.append(self._delta(self._tools[position], delta))
        return out

    def _end(self) -> list[Event]:
        self._done = True
        reason, sequence = stop_reason(self._finish, self._matched, bool(self._tools))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(self._input_tokens, self._output_tokens),
        }
        return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]
