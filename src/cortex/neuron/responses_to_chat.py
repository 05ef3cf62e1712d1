"""Responses API requests → chat messages, and the store behind ``previous_response_id``.

Owns the one translation from Responses input items, tools and sampling fields into the
chat form the rest of the neuron serves (``protocol.openai``), so a Responses request
runs through the same prompt rendering and engine as a chat completion.

Rules:

* ``instructions`` become a leading system message. They are NOT carried over from a
  previous response (OpenAI's documented behaviour), so ``Conversation.history``, what
  is stored for the next turn, leaves them out. Stored history goes after them and
  before this request's items. The leading run of system messages (instructions, then
  any ``system``/``developer`` items right after) is merged into one, since many chat
  templates accept a system message only in first place.
* ``developer`` is ``system``. ``output_text``/``input_text``/``refusal`` parts are text;
  ``input_image``/``input_file`` parts are a 400 (the models served read text only).
* Consecutive ``function_call`` items (and an assistant message right before them) are
  ONE assistant message with ``tool_calls`` (id = ``call_id``); a
  ``function_call_output`` is a ``tool`` message. A ``reasoning`` item's text (its
  ``reasoning_text`` content, else its summary) is the ``reasoning_content`` of the next
  assistant message, and is dropped when no assistant message follows.
* Namespace tools are flattened: the model sees each nested function as
  ``<namespace>__<function>`` (just ``<namespace><function>`` when the namespace already
  ends in ``__``, as Codex's ``mcp__server__`` does), so names stay unique and
  self-describing in a flat chat template. Calls go back to the client split again, as
  the SDK's ``function_call`` item has them (``name`` = the function's own name,
  ``namespace`` = the namespace), because that is what clients such as Codex dispatch
  on; ``Conversation.tool_names`` maps each flat name back. Replayed ``function_call``
  items that carry a ``namespace`` are flattened the same way.
* Hosted tools (``web_search``, ``file_search``, ``mcp``, ``custom`` …) cannot run
  here; they are listed in ``ignored_tools``, never a 400.
* ``text.format`` is chat's ``response_format`` (``json_schema``'s fields sit beside its
  ``type`` here, under ``json_schema`` there); a function tool's ``strict`` is kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.errors import InvalidRequest, NotFound
from cortex.protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDef,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
)
from cortex.protocol.responses import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    InputFile,
    InputImage,
    InputText,
    MessageItem,
    NamespaceTool,
    OutputText,
    ReasoningItem,
    ResponsesRequest,
    response_format,
)

ChatToolChoice = Literal["none", "auto", "required"] | NamedToolChoice

# Responses field → chat completion field, for the sampling settings both APIs share.
_SAMPLING = {
    "max_output_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "parallel_tool_calls": "parallel_tool_calls",
}


def flat_tool_name(namespace: str | None, name: str) -> str:
    """The name the model sees for function ``name`` of ``namespace``."""
    if not namespace:
        return name
    return f"{namespace}{'' if namespace.endswith('__') else '__'}{name}"


@dataclass(slots=True)
class Conversation:
    """A Responses request in chat form."""

    messages: list[ChatMessage]
    history: list[ChatMessage]  # ``messages`` without the instructions: what a next turn continues
    tools: list[Tool] | None = None
    tool_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # flat → (ns, name)
    ignored_tools: list[str] = field(default_factory=list)
    ignored_items: list[str] = field(default_factory=list)
    tool_choice: ChatToolChoice | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # chat completion field → value
    response_format: ResponseFormat | None = None

    def chat_request(self, model: str, *, stream: bool = False) -> ChatCompletionRequest:
        """The equivalent chat completion request."""
        return ChatCompletionRequest(
            model=model,
            messages=self.messages,
            tools=self.tools,
            tool_choice=self.tool_choice if self.tools else None,
            stream=stream,
            response_format=self.response_format,
            **self.sampling,
        )

    def continued(self, output: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
        """What to store under this response's id: its history plus its output."""
        return [*self.history, *output_messages(output)]


def to_chat(request: ResponsesRequest, history: list[ChatMessage] | None = None) -> Conversation:
    """Translate ``request``; ``history`` is the stored conversation of the previous response."""
    tools, tool_names, ignored_tools = _tools(request)
    items = (
        [MessageItem(role="user", content=request.input)]
        if isinstance(request.input, str)
        else request.input
    )
    turn, ignored_items = _messages(items)
    carried = [*(history or []), *turn]
    lead = (
        [ChatMessage(role="system", content=request.instructions)] if request.instructions else []
    )
    messages = _merge_leading_system([*lead, *carried])
    if not messages:
        raise InvalidRequest("input: no messages to respond to", param="input")
    sampling = {
        chat: getattr(request, name)
        for name, chat in _SAMPLING.items()
        if getattr(request, name) is not None
    }
    if request.reasoning is not None and request.reasoning.effort is not None:
        sampling["reasoning_effort"] = request.reasoning.effort
    return Conversation(
        messages=messages,
        history=carried,
        tools=tools or None,
        tool_names=tool_names,
        ignored_tools=ignored_tools,
        ignored_items=ignored_items,
        tool_choice=_tool_choice(request, tools, tool_names),
        sampling=sampling,
        response_format=response_format(request.text),
    )


def _tools(request: ResponsesRequest) -> tuple[list[Tool], dict[str, tuple[str, str]], list[str]]:
    tools: list[Tool] = []
    names: dict[str, tuple[str, str]] = {}
    ignored: list[str] = []
    seen: set[str] = set()

    def add(spec: FunctionTool, namespace: str | None, where: str) -> None:
        flat = flat_tool_name(namespace, spec.name)
        if flat in seen:
            raise InvalidRequest(
                f"{where}.name: duplicate tool name {flat!r}", param=f"{where}.name"
            )
        seen.add(flat)
        if namespace:
            names[flat] = (namespace, spec.name)
        function = FunctionDef(
            name=flat, description=spec.description, parameters=spec.parameters, strict=spec.strict
        )
        tools.append(Tool(function=function))

    for i, tool in enumerate(request.tools or []):
        if isinstance(tool, FunctionTool):
            add(tool, None, f"tools.{i}")
        elif isinstance(tool, NamespaceTool):
            for j, nested in enumerate(tool.tools):
                if isinstance(nested, FunctionTool):
                    add(nested, tool.name, f"tools.{i}.tools.{j}")
                else:
                    ignored.append(str(nested["type"]))
        else:
            ignored.append(str(tool["type"]))
    return tools, names, list(dict.fromkeys(ignored))


def _tool_choice(
    request: ResponsesRequest, tools: list[Tool], names: Mapping[str, tuple[str, str]]
) -> ChatToolChoice | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, FunctionChoice):
        flat = {tool.function.name for tool in tools}
        own = [f for f, (_, name) in names.items() if name == choice.name]
        if choice.name in flat:
            return NamedToolChoice(function=NamedFunction(name=choice.name))
        if len(own) == 1:
            return NamedToolChoice(function=NamedFunction(name=own[0]))
        raise InvalidRequest(
            f"tool_choice.name: no function tool named {choice.name!r}", param="tool_choice.name"
        )
    mode = choice.get("mode")  # {"type": "allowed_tools", "mode": "auto" | "required", …}
    return mode if mode in ("auto", "required") else None  # a hosted tool type: no choice here


def _messages(items: Sequence[Any]) -> tuple[list[ChatMessage], list[str]]:
    out: list[ChatMessage] = []
    ignored: list[str] = []
    reasoning: list[str] = []

    def take_reasoning() -> str | None:
        text = "\n\n".join(reasoning) or None
        reasoning.clear()
        return text

    for i, item in enumerate(items):
        where = f"input.{i}"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            text = _text(item.content, f"{where}.content")
            if role == "assistant":
                out.append(
                    ChatMessage(role="assistant", content=text, reasoning_content=take_reasoning())
                )
            else:
                reasoning.clear()
                out.append(ChatMessage(role=role, content=text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(
                id=item.call_id,
                function=FunctionCall(
                    name=flat_tool_name(item.namespace, item.name), arguments=item.arguments
                ),
            )
            if out and out[-1].role == "assistant" and not reasoning:
                out[-1] = out[-1].model_copy(
                    update={"tool_calls": [*(out[-1].tool_calls or []), call]}
                )
            else:
                out.append(
                    ChatMessage(
                        role="assistant", tool_calls=[call], reasoning_content=take_reasoning()
                    )
                )
        elif isinstance(item, FunctionCallOutputItem):
            reasoning.clear()
            text = _text(item.output, f"{where}.output")
            out.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=text))
        elif isinstance(item, ReasoningItem):
            parts = [part.text for part in item.content or []]
            text = "".join(parts) if parts else "\n\n".join(s.text for s in item.summary)
            if text:
                reasoning.append(text)
        else:
            ignored.append(str(item["type"]))
    return out, ignored


def _text(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, InputImage | InputFile):
            kind = "images" if isinstance(part, InputImage) else "files"
            raise InvalidRequest(
                f"{where}.{j}: {part.type} is not supported: the models served here read text "
                f"only, so {kind} cannot be sent; send the content as input_text instead",
                param=f"{where}.{j}.type",
            )
        texts.append(part.text if isinstance(part, InputText | OutputText) else part.refusal)
    return "".join(texts)


def _merge_leading_system(messages: list[ChatMessage]) -> list[ChatMessage]:
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    if lead < 2:
        return messages
    texts = [m.content for m in messages[:lead] if isinstance(m.content, str) and m.content]
    return [ChatMessage(role="system", content="\n\n".join(texts)), *messages[lead:]]


def output_messages(output: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    """A response's output items as chat history: one assistant message (or none if empty).

    Its text is the ``output_text`` parts, its ``reasoning_content`` the reasoning text,
    its ``tool_calls`` the function calls (names flattened as the model saw them).
    """
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for item in output:
        kind = item.get("type")
        if kind == "message":
            texts.extend(
                p["text"] for p in item.get("content", []) if p.get("type") == "output_text"
            )
        elif kind == "reasoning":
            reasoning.extend(p["text"] for p in item.get("content") or [])
        elif kind == "function_call":
            name = flat_tool_name(item.get("namespace"), item["name"])
            calls.append(
                ToolCall(
                    id=item["call_id"],
                    function=FunctionCall(name=name, arguments=item["arguments"]),
                )
            )
    if not (texts or reasoning or calls):
        return []
    message = ChatMessage(
        role="assistant",
        content="".join(texts) if texts or not calls else None,
        reasoning_content="".join(reasoning) or None,
        tool_calls=calls or None,
    )
    return [message]


class ResponseStore:
    """Conversations of recent responses, for ``previous_response_id``.

    In memory, per neuron process: lost on restart and unknown to other neurons (the
    gateway must route a follow-up to the same neuron, or the client must resend the
    history, as Codex does with ``store: false``). Bounded: past ``max_responses`` the
    least recently used conversation is evicted. Not thread-safe; use it from the event
    loop only. Put a response only when its request did not say ``store: false``.
    """

    __slots__ = ("_items", "max_responses")

    def __init__(self, max_responses: int = 1000) -> None:
        if max_responses < 1:
            raise ValueError("max_responses must be at least 1")
        self.max_responses = max_responses
        self._items: OrderedDict[str, list[ChatMessage]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, conversation_messages: list[ChatMessage]) -> None:
        self._items[response_id] = list(conversation_messages)
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_responses:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> list[ChatMessage] | None:
        messages = self._items.get(response_id)
        if messages is None:
            return None
        self._items.move_to_end(response_id)
        return list(messages)

    def history_for(self, request: ResponsesRequest) -> list[ChatMessage] | None:
        """The history ``request`` continues; a 404 naming the field if it is not stored."""
        if request.previous_response_id is None:
            return None
        messages = self.get(request.previous_response_id)
        if messages is None:
            raise NotFound(
                f"Previous response with id {request.previous_response_id!r} not found "
                "(responses are kept in memory on one neuron, a bounded number of them)",
                param="previous_response_id",
            )
        return messages
