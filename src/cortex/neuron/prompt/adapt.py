"""Messages adapted to what one chat template accepts.

Real templates are strict in different ways: Mistral's want tool-call ids of nine letters and
digits and strictly alternating roles, Llama 3's render one call per assistant turn, R1-Distill's
render calls only when ``content is none``, DeepSeek-V3.1's concatenate ``arguments`` as a
string, Gemma 3's know no tool or system role and render no tools at all, Phi-4-mini's read
tools from the system message. A ``TemplateProfile`` (found by probing the template at load,
``prompt.probe``) says which of these changes a template needs; ``adapt`` applies them, in this
order, to the dicts ``messages.template_messages`` made:

1. ids: the model's own id shape where its format has one (Kimi's ``functions.NAME:IDX``), else
   nine letters and digits where the template demands it, derived from the client's id so that
   every turn maps it the same way (a call and its result keep matching, and a conversation's
   prompt prefix stays the same from turn to turn);
2. reasoning under the key the template reads (``reasoning_content``, ``thinking``), or dropped;
3. calls the template drops written into the content in the model's own syntax;
4. arguments as a JSON string where the template concatenates them;
5. one call per assistant turn, each followed by its result;
6. ``content: None`` on assistant turns with calls;
7. tool results as user turns, for templates without a tool role;
8. tools declared where the template looks for them (the ``tools`` argument, a system message's
   ``tools`` field, or a description cortex writes into the system message);
9. system turns folded into the next user turn;
10. consecutive turns of one role merged, and a user turn right after tool results folded into
    the last result, so that "roles must alternate" never reaches a client.

Everything here is pure: it builds new dicts and never changes its inputs.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.neuron.formats import ToolSyntax

__all__ = ["Adaptations", "Declare", "TemplateProfile", "adapt", "short_id"]

Message = dict[str, Any]
Declare = Literal["tools", "system_field", "describe"]

_BASE62 = string.digits + string.ascii_letters


@dataclass(frozen=True, slots=True)
class Adaptations:
    """Which message changes a template needs (steps 1–10 of the module docstring)."""

    ids9: bool = False
    content_none: bool = False
    args_string: bool = False
    split_calls: bool = False
    calls_as_text: bool = False
    tools_as_user: bool = False
    fold_system: bool = False
    merge_roles: bool = False

    def names(self) -> list[str]:
        return [name for name in self.__slots__ if getattr(self, name)]


@dataclass(frozen=True, slots=True)
class TemplateProfile:
    """What one chat template accepts."""

    declare: Declare = "tools"
    adaptations: Adaptations = field(default_factory=Adaptations)
    reasoning_key: str | None = "reasoning_content"


def short_id(client_id: str) -> str:
    """Nine letters and digits, the same for the same client id."""
    number = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
    digits = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(digits)


def adapt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    profile: TemplateProfile,
    syntax: ToolSyntax | None,
) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """(messages, tools) for the template; ``tools`` is ``None`` when declared in a message."""
    steps = profile.adaptations
    out = _ids([dict(m) for m in messages], syntax, steps.ids9)
    out = _reasoning(out, profile.reasoning_key)
    if steps.calls_as_text:
        out = _calls_as_text(out, syntax)
    if steps.args_string:
        out = _args_string(out)
    if steps.split_calls:
        out = _split_calls(out)
    if steps.content_none:
        out = [
            {**m, "content": None} if m["role"] == "assistant" and m.get("tool_calls") else m
            for m in out
        ]
    if steps.tools_as_user:
        out = _tools_as_user(out, syntax)
    declared = [dict(tool) for tool in tools] if tools else None
    if declared and profile.declare != "tools":
        out = _declare(out, declared, profile.declare, syntax)
        declared = None
    if steps.fold_system:
        out = _fold_system(out)
    if steps.merge_roles:
        out = _merge_roles(out)
    return out, declared


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _join(first: str, second: str) -> str:
    return f"{first}\n\n{second}" if first and second else first or second


def _ids(messages: list[Message], syntax: ToolSyntax | None, ids9: bool) -> list[Message]:
    mapped: dict[str, str] = {}
    count = 0
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if calls:
            renamed = []
            for call in calls:
                client = call.get("id") or f"call_{count}"
                name = call["function"]["name"]
                own = syntax.history_id(name, count) if syntax is not None else None
                new = own or (short_id(client) if ids9 else client)
                mapped[client] = new
                renamed.append({**call, "id": new})
                count += 1
            messages[i] = {**message, "tool_calls": renamed}
        elif message["role"] == "tool" and message.get("tool_call_id") is not None:
            client = message["tool_call_id"]
            new = mapped.get(client) or (short_id(client) if ids9 else client)
            messages[i] = {**message, "tool_call_id": new}
    return messages


def _reasoning(messages: list[Message], key: str | None) -> list[Message]:
    out = []
    for message in messages:
        if "reasoning_content" in message:
            message = dict(message)
            reasoning = message.pop("reasoning_content")
            if key is not None:
                message[key] = reasoning
        out.append(message)
    return out


def _calls_as_text(messages: list[Message], syntax: ToolSyntax | None) -> list[Message]:
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            pairs = [(c["function"]["name"], _object(c["function"]["arguments"])) for c in calls]
            if syntax is not None:
                written = syntax.write(pairs)
            else:
                written = "\n".join(
                    json.dumps({"name": n, "arguments": a}, ensure_ascii=False) for n, a in pairs
                )
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            message["content"] = _join(_content(message), written)
        out.append(message)
    return out


def _object(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    return {"arguments": arguments}  # text that was not JSON: keep it, under a name


def _args_string(messages: list[Message]) -> list[Message]:
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {
                **message,
                "tool_calls": [
                    {
                        **call,
                        "function": {
                            **call["function"],
                            "arguments": _string(call["function"]["arguments"]),
                        },
                    }
                    for call in calls
                ],
            }
        out.append(message)
    return out


def _string(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _split_calls(messages: list[Message]) -> list[Message]:
    """Each call its own assistant turn, followed by its result when the results follow."""
    out: list[Message] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        calls = message.get("tool_calls") or []
        i += 1
        if message["role"] != "assistant" or len(calls) < 2:
            out.append(message)
            continue
        results: list[Message] = []
        while i < len(messages) and messages[i]["role"] == "tool":
            results.append(messages[i])
            i += 1
        for n, call in enumerate(calls):
            turn = {**message, "tool_calls": [call]}
            if n:  # text and reasoning belong to the first turn
                turn["content"] = ""
                for key in ("reasoning_content", "thinking"):
                    turn.pop(key, None)
            out.append(turn)
            answer = next((r for r in results if r.get("tool_call_id") == call.get("id")), None)
            if answer is not None:
                results.remove(answer)
                out.append(answer)
        out.extend(results)  # results that answer no call here keep their place
    return out


def _tools_as_user(messages: list[Message], syntax: ToolSyntax | None) -> list[Message]:
    names: dict[str, str] = {}
    out = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            names[str(call.get("id"))] = call["function"]["name"]
        if message["role"] == "tool":
            name = message.get("name") or names.get(str(message.get("tool_call_id")), "the tool")
            content = _content(message)
            text = syntax.write_result(name, content) if syntax else f"Result of {name}:\n{content}"
            message = {"role": "user", "content": text}
        out.append(message)
    return out


def _declare(
    messages: list[Message],
    tools: list[dict[str, Any]],
    declare: Declare,
    syntax: ToolSyntax | None,
) -> list[Message]:
    first = messages[0] if messages and messages[0]["role"] == "system" else None
    system = dict(first) if first is not None else {"role": "system", "content": ""}
    if declare == "system_field":
        system["tools"] = json.dumps(tools, ensure_ascii=False)
    elif syntax is not None:
        system["content"] = _join(_content(system), syntax.describe(tools))
    else:
        return messages  # nothing cortex could teach the model: it cannot call tools
    return [system, *messages[1:]] if first is not None else [system, *messages]


def _fold_system(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            if _content(message):
                pending.append(_content(message))
            continue
        if message["role"] == "user" and pending:
            message = {**message, "content": _join("\n\n".join(pending), _content(message))}
            pending = []
        out.append(message)
    if pending:  # no user turn came after them: they become one
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def _merge_roles(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        previous = out[-1] if out else None
        role = message["role"]
        if previous is not None and role == "user" and previous["role"] == "tool":
            out[-1] = {**previous, "content": _join(_content(previous), _content(message))}
            continue
        plain = not message.get("tool_calls") and not (previous or {}).get("tool_calls")
        if previous is not None and previous["role"] == role and role != "tool" and plain:
            out[-1] = {**previous, "content": _join(_content(previous), _content(message))}
            continue
        out.append(message)
    return out
