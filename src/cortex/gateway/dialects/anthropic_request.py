"""Anthropic Messages requests → the OpenAI chat dialect the neurons speak.

Pure functions over typed requests (no I/O): ``to_openai`` (a ``MessagesRequest`` → the
chat completion body sent to a neuron) and ``to_tokenize`` (a ``CountTokensRequest`` →
the neuron's ``/tokenize`` body). The reply side is ``gateway.dialects.anthropic_reply`` (whole
replies) and ``gateway.dialects.anthropic_stream`` (streams).

Chat templates accept a system prompt only first, so every ``system`` text (the top-level
field and any ``role: "system"`` message inside ``messages``, wherever it sits) is folded,
in order, into one leading system message. The models behind cortex take text only:
images and documents in a user turn are refused with a 400 (inside a tool result they
become a short placeholder, so a screenshot tool does not wedge a whole conversation).

Structured outputs: ``output_config.format`` (or the beta's ``output_format``) becomes a
strict ``json_schema`` ``response_format`` named ``output``, and a custom tool's ``strict``
its function's ``strict``. ``output_config.effort`` becomes ``reasoning_effort`` (``xhigh``
and ``max`` are ``high``) only where thinking is ``enabled`` or ``disabled``: the chat
template switches those set win, so it sets just the level (gpt-oss); with ``adaptive`` or no
thinking it would switch thinking on where the template keeps it off, so it is left out.
"""

from __future__ import annotations

import json
from typing import Any

from cortex.errors import InvalidRequest
from cortex.protocol.anthropic import (
    CountTokensRequest,
    CustomTool,
    DocumentBlock,
    ImageBlock,
    InputMessage,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolResultBlock,
    ToolUseBlock,
)

# Inside a tool result an image cannot be refused without wedging the conversation (the
# client resends it on every later turn), so the model is told what it cannot see.
IMAGE_PLACEHOLDER = "[image omitted: this model takes text only]"
DOCUMENT_PLACEHOLDER = "[document omitted: this model takes text only]"

# Anthropic's ``output_config.effort`` → OpenAI's ``reasoning_effort``.
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


# --- request ------------------------------------------------------------------------------


def to_openai(request: MessagesRequest, model: str) -> dict[str, Any]:
    """The OpenAI chat completion body for a neuron; ``model`` is the resolved model id."""
    body: dict[str, Any] = {"model": model, "messages": chat_messages(request)}
    body["max_tokens"] = request.max_tokens
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    body.update(_tools(request))
    body.update(_output(request))
    body.update(_template_kwargs(request))
    if isinstance(request.thinking, ThinkingEnabled):
        # The neuron forces the end of thinking once the budget is spent, then the answer
        # follows; max_tokens still bounds thinking and answer together, as Anthropic's does.
        body["thinking_token_budget"] = request.thinking.budget_tokens
    body["stream"] = request.stream
    if request.stream:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return body


def to_tokenize(request: CountTokensRequest, model: str, source: str | None) -> dict[str, Any]:
    """The neuron's ``/tokenize`` body: the prompt exactly as ``to_openai`` would render it."""
    body: dict[str, Any] = {"model": model}
    if source is not None:
        body["source"] = source
    body["messages"] = chat_messages(request)
    tools = _tools(request).get("tools")
    if tools:
        body["tools"] = tools
    body.update(_template_kwargs(request))
    return body


def _template_kwargs(request: CountTokensRequest) -> dict[str, Any]:
    # Templates switch thinking with "enable_thinking" (Qwen3, GLM) or "thinking"
    # (DeepSeek V3.1, off by default there); a template ignores the name it does not read.
    # "adaptive" leaves each template its own default; "enabled" carries its budget in the
    # request body as well.
    if request.thinking_disabled:
        return {"chat_template_kwargs": {"enable_thinking": False, "thinking": False}}
    if isinstance(request.thinking, ThinkingEnabled):
        return {"chat_template_kwargs": {"enable_thinking": True, "thinking": True}}
    return {}


def _output(request: MessagesRequest) -> dict[str, Any]:
    """``response_format`` and ``reasoning_effort`` from ``output_config``/``output_format``."""
    out: dict[str, Any] = {}
    config = request.output_config
    fmt = config.format if config is not None else None
    beta = request.output_format
    if fmt is not None and beta is not None and fmt.schema_ != beta.schema_:
        raise InvalidRequest(
            "output_format: give output_config.format or output_format, not two different schemas",
            param="output_format",
        )
    fmt = fmt or beta
    if fmt is not None:
        spec = {"name": "output", "schema": fmt.schema_, "strict": True}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    effort = _EFFORT.get(config.effort or "") if config is not None else None
    if effort is not None and isinstance(request.thinking, ThinkingEnabled | ThinkingDisabled):
        out["reasoning_effort"] = effort
    return out


def _tools(request: CountTokensRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``; hosted tools are dropped."""
    tools = []
    for tool in request.tools or []:
        if not isinstance(tool, CustomTool):
            continue  # web search, code execution …: nothing a neuron can run
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if choice is None:
        return out
    if isinstance(choice, ToolChoiceAuto):
        out["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        out["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceNone):
        out["tool_choice"] = "none"
    else:
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def chat_messages(request: CountTokensRequest) -> list[dict[str, Any]]:
    """``system`` + ``messages`` → OpenAI chat messages, every system text folded first."""
    system: list[str] = []
    if isinstance(request.system, str):
        if request.system:
            system.append(request.system)
    elif request.system:
        system.append("\n\n".join(block.text for block in request.system))
    out: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        where = f"messages.{i}.content"
        if message.role == "system":
            text = _system_text(message, where)
            if text:
                system.append(text)
        elif message.role == "assistant":
            out.append(_assistant(message))
        else:  # "user", and any role we do not know
            out += _user(message, where)
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return out


def _refuse(block: ImageBlock | DocumentBlock, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}: content of type {block.type!r} is not supported; this model takes text only",
        param=f"{where}.type",
    )


def _system_text(message: InputMessage, where: str) -> str:
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, block in enumerate(message.content):
        if isinstance(block, ImageBlock | DocumentBlock):
            raise _refuse(block, f"{where}.{j}")
        if isinstance(block, TextBlock):
            texts.append(block.text)
    return "\n\n".join(texts)


def _user(message: InputMessage, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``tool`` messages first, then its text."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            results.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": _result(block)}
            )
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise _refuse(block, f"{where}.{j}")
        # thinking, tool_use and unknown kinds in a user turn carry nothing a model reads
    if texts or not results:
        results.append({"role": "user", "content": "\n\n".join(texts)})
    return results


def _result(block: ToolResultBlock) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for part in block.content:
            if isinstance(part, TextBlock):
                parts.append(part.text)
            elif isinstance(part, ImageBlock):
                parts.append(IMAGE_PLACEHOLDER)
            elif isinstance(part, DocumentBlock):
                parts.append(DOCUMENT_PLACEHOLDER)
        text = "\n\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _assistant(message: InputMessage) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            if block.thinking:
                reasoning.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, RedactedThinkingBlock):
            continue  # Anthropic-encrypted reasoning: nothing a local model can read
    # "" rather than null: templates that ``trim`` the content would render "None".
    out: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if reasoning:
        out["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return out
