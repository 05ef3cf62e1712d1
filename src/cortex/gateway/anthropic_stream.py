"""OpenAI ``chat.completion.chunk`` stream → Anthropic Messages stream events.

Owns the reply side of the Anthropic translation that streaming and non-streaming share
(message and tool-use ids, stop reasons, thinking signatures, usage) and the
``StreamTranslator``, one per request: it is fed parsed OpenAI chunks and returns
``(event name, data)`` pairs in Anthropic's order::

    message_start, ping,
    (content_block_start, content_block_delta*, [signature_delta], content_block_stop)*,
    message_delta, message_stop

Pure: no I/O, no clock. The gateway writes ``sse(name, data)`` for each pair.

Thinking signatures are NOT Anthropic's cryptographic signatures: they are an opaque,
non-empty token derived from the block's text (base64 of a truncated SHA-256), so that
clients which insist on a signature have one to send back. Cortex never verifies them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from typing import Any

import orjson

from cortex.errors import CortexError, EngineFailure
from cortex.protocol.anthropic import error_body

Event = tuple[str, dict[str, Any]]

_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


# --- reply pieces shared with the non-streaming translation -------------------------------


def message_id(completion_id: str | None) -> str:
    """``msg_…`` from the upstream completion id (``chatcmpl-…``), or a fresh one."""
    if not completion_id:
        return f"msg_{uuid.uuid4().hex}"
    return "msg_" + _NOT_ID.sub("_", completion_id.removeprefix("chatcmpl-"))


def tool_use_id(call_id: str | None, index: int = 0) -> str:
    """``toolu_…`` from an OpenAI call id; Anthropic ids match ``[A-Za-z0-9_-]+``."""
    if not call_id:
        return f"toolu_{uuid.uuid4().hex[:24]}_{index}"
    if call_id.startswith("toolu_"):
        return _NOT_ID.sub("_", call_id)
    return "toolu_" + _NOT_ID.sub("_", call_id.removeprefix("call_"))


def thinking_signature(digest: bytes) -> str:
    """An opaque signature from the SHA-256 digest of a thinking block's text (not Anthropic's)."""
    return base64.b64encode(digest[:24]).decode("ascii")


def stop_reason(
    finish_reason: str | None, matched: object, made_calls: bool
) -> tuple[str, str | None]:
    """OpenAI ``finish_reason`` (+ vLLM's ``stop_reason``) → Anthropic (stop_reason, sequence).

    ``matched`` is the choice's ``stop_reason``: the stop string that ended generation, or a
    token id / null when it stopped on an end-of-turn token.
    """
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "tool_calls" or (made_calls and finish_reason in (None, "stop")):
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def reasoning_of(delta: dict[str, Any]) -> str | None:
    """The reasoning text of a delta or message; neurons send it in two fields at once."""
    value = delta.get("reasoning_content")
    if value is None:
        value = delta.get("reasoning")
    return value if isinstance(value, str) else None


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE frame: ``event: name`` then the JSON data line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# --- the stream ---------------------------------------------------------------------------


class StreamTranslator:
    """Parsed OpenAI chunks in, Anthropic ``(event, data)`` pairs out; one per request.

    Blocks open in the order deltas arrive; a delta of another kind closes the open block.
    A tool call's argument fragments go to the block opened for its OpenAI ``index`` (kept
    open until another block opens, so fragments normally arrive while it is open).
    ``omit_thinking`` (``thinking.display == "omitted"``) keeps thinking blocks but sends
    no thinking text, only the signature.
    """

    def __init__(
        self, client_model: str, *, message_id: str | None = None, omit_thinking: bool = False
    ) -> None:
        self._model = client_model
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
    def sse(name: str, data: dict[str, Any]) -> bytes:
        return sse(name, data)

    @staticmethod
    def ping() -> Event:
        return "ping", {"type": "ping"}

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """One parsed OpenAI chunk → the events it implies (often none or one)."""
        if self._done:
            return []
        if isinstance(chunk.get("error"), dict):
            message = chunk["error"].get("message")
            return self.error(EngineFailure(str(message or "the upstream stream failed")))
        out: list[Event] = []
        self._take_usage(chunk.get("usage"))
        if not self._started:
            out += self._start(chunk.get("id"))
        choices = chunk.get("choices") or []
        for choice in choices[:1]:
            delta = choice.get("delta") or {}
            reasoning = reasoning_of(delta)
            if reasoning:
                out += self._thinking_delta(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._text_delta(content)
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
                self._finished = True
                out += self._close()
        if not choices and self._finished and chunk.get("usage"):
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
        return [("error", error_body(err))]

    # --- internals ------------------------------------------------------------------------

    def _take_usage(self, figures: object) -> None:
        if not isinstance(figures, dict):
            return
        prompt, completion = figures.get("prompt_tokens"), figures.get("completion_tokens")
        if isinstance(prompt, int):
            self._input_tokens = prompt
        if isinstance(completion, int):
            self._output_tokens = completion

    def _start(self, completion_id: object) -> list[Event]:
        self._started = True
        if self._id is None:
            self._id = message_id(completion_id if isinstance(completion_id, str) else None)
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

    def _tool_delta(self, call: dict[str, Any]) -> list[Event]:
        position = call.get("index")
        position = position if isinstance(position, int) else len(self._tools)
        function = call.get("function") or {}
        out: list[Event] = []
        if position not in self._tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), position),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open_block("tool_use", block)
            if self._open is not None:
                self._tools[position] = self._open
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
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
