"""OpenAI chat messages → the model's own chat template → prompt token ids.

Owns the translation of wire messages into the dicts Hugging Face chat templates
expect (tool-call arguments as objects, ``developer`` as ``system``, text parts
joined) and turns template failures into 400s instead of tracebacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from cortex.errors import InvalidRequest
from cortex.protocol.openai import ChatMessage, ContentPart, Tool


@dataclass(slots=True, frozen=True)
class Prompt:
    text: str
    ids: list[int]


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
        if message.reasoning_content is not None:
            item["reasoning_content"] = message.reasoning_content
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


def render(
    tokenizer: Any,
    messages: list[ChatMessage],
    tools: list[Tool] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> Prompt:
    """Render and tokenize; blocking (runs off the event loop for long prompts)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(
            "This model has no chat template, so it cannot serve chat completions", param="model"
        )
    tool_dicts = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
    try:
        text = tokenizer.apply_chat_template(
            template_messages(messages),
            tools=tool_dicts,
            add_generation_prompt=True,
            tokenize=False,
            **(template_kwargs or {}),
        )
    except TemplateError as exc:
        raise InvalidRequest(f"The model's chat template rejected the messages: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidRequest(
            f"The messages could not be rendered by the chat template: {exc}"
        ) from None
    ids = tokenizer.encode(text, add_special_tokens=False)
    return Prompt(text=text, ids=list(ids))


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
