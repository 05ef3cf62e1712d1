"""OpenAI chat messages → the plain dicts Hugging Face chat templates read.

Tool-call arguments become objects (templates render them with ``tojson``), ``developer`` becomes
``system``, text parts are joined, and reasoning rides along as ``reasoning_content`` (``adapt``
renames or drops it for the template at hand). Anything a text-only model cannot take is a 400.
"""

from __future__ import annotations

import json
from typing import Any

from cortex.errors import InvalidRequest
from cortex.protocol.openai import ChatMessage, ContentPart


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    rendered = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": _text(message.content, f"messages.{i}.content"),
        }
        if message.name is not None:
            item["name"] = message.name
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        reasoning = message.reasoning_content
        if reasoning is None and isinstance((message.model_extra or {}).get("reasoning"), str):
            reasoning = (message.model_extra or {})["reasoning"]  # vLLM's name for it
        if reasoning:
            item["reasoning_content"] = reasoning
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments),
                    },
                }
                for call in message.tool_calls
            ]
        rendered.append(item)
    return rendered


def _text(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise InvalidRequest(
                f"{where}.{j}: content of type {part.type!r} is not supported; "
                "this model takes text only",
                param=f"{where}.{j}.type",
            )
        if part.text is None:
            raise InvalidRequest(f"{where}.{j}.text: Field required", param=f"{where}.{j}.text")
        texts.append(part.text)
    return "".join(texts)


def _arguments(arguments: str) -> Any:
    """Templates render ``arguments`` with ``tojson``; give them the object when it parses."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments
