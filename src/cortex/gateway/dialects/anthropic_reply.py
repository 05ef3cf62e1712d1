"""An OpenAI ``chat.completion`` → an Anthropic ``message``, and the pieces of a reply that
whole replies and streams (``gateway.dialects.anthropic_stream``) share: message and tool-use
ids, stop reasons, thinking signatures, usage, and Anthropic's wording for a prompt past
the context.

Thinking signatures are NOT Anthropic's cryptographic signatures: they are an opaque,
non-empty token derived from the block's text (base64 of a truncated SHA-256), so that
clients which insist on a signature have one to send back. Cortex never verifies them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any

from cortex.errors import BadUpstream
from cortex.protocol.openai import ChatCompletion

_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def prompt_too_long(prompt_tokens: int, context: int) -> str:
    """Anthropic's message for a prompt past the context (Claude Code parses it to compact)."""
    return f"prompt is too long: {prompt_tokens} tokens > {context} maximum"


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


def from_openai(
    completion: ChatCompletion, client_model: str, *, omit_thinking: bool = False
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` → an Anthropic ``message``.

    ``client_model`` is the name the client asked for (not the resolved id). Blocks come
    as thinking, text (when not empty), then one ``tool_use`` per call.
    """
    if not completion.choices:
        raise BadUpstream("The model's reply had no choices")
    choice = completion.choices[0]
    message = choice.message
    content: list[dict[str, Any]] = []
    reasoning = message.reasoning_text
    if reasoning:
        signature = thinking_signature(hashlib.sha256(reasoning.encode()).digest())
        thinking = "" if omit_thinking else reasoning
        content.append({"type": "thinking", "thinking": thinking, "signature": signature})
    if message.content:
        content.append({"type": "text", "text": message.content})
    calls = message.tool_calls or []
    for index, call in enumerate(calls):
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.id, index),
                "name": call.function.name,
                "input": _arguments(call.function.arguments),
            }
        )
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason, bool(calls))
    figures = completion.usage
    return {
        "id": message_id(completion.id),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": client_model,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(figures.prompt_tokens, figures.completion_tokens)
        if figures
        else usage(0, 0),
    }


def _arguments(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as the object Anthropic's ``input`` must be.

    Neurons only send calls whose arguments parse; anything else is kept whole rather than
    lost, under ``arguments``.
    """
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
