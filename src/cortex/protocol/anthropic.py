"""Anthropic Messages API wire shapes: requests, error envelopes (``POST /v1/messages``).

Data shapes only, no I/O; the translation to and from the OpenAI chat dialect the neurons
speak lives in ``gateway.dialects``. Validated strictly like ``protocol.openai`` (a string
where a number belongs is a 400 naming the field); unknown fields are accepted and ignored,
because Claude Code sends many (``context_management``, ``metadata``, ``cache_control`` on
blocks, ``defer_loading`` on tools, ``$schema`` inside schemas). Structured outputs come as
``output_config.format`` or the older beta top-level ``output_format``, both a
``{"type": "json_schema", "schema": {…}}``, and as ``strict`` on a custom tool.

Leniencies, each on purpose:

* a message's ``role`` is any string: Claude Code sends ``role: "system"`` messages
  inside ``messages``, which the translator folds into the leading system prompt;
* content blocks, tool-result parts, tools and ``thinking`` configs of a ``type`` we do not
  act on are kept loosely (type plus whatever else was sent) so the translator decides;
* a ``thinking`` block's ``signature`` may be empty or missing (ours are not Anthropic's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Tag, ValidationError

from cortex.errors import CortexError
from cortex.protocol.validation import INT32_MAX, invalid_request, type_tag

_REQUEST = ConfigDict(extra="allow", strict=True)


# --- content blocks -----------------------------------------------------------------------


class TextBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["text"]
    text: str


class ImageBlock(BaseModel):
    """Accepted here; the translator refuses it (the models behind cortex take text only)."""

    model_config = _REQUEST
    type: Literal["image"]


class DocumentBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["document"]


class OtherBlock(BaseModel):
    """A block of a type we do not act on (``search_result``, server tool blocks, …)."""

    model_config = _REQUEST
    type: str


ResultPart = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[OtherBlock, Tag("other")],
    type_tag(frozenset({"text", "image", "document"})),
]


class ToolUseBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(BaseModel):
    model_config = _REQUEST
    type: Literal["redacted_thinking"]
    data: str


_BLOCKS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)

ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    type_tag(_BLOCKS),
]


class InputMessage(BaseModel):
    """One entry of ``messages``; ``role`` is kept as sent (see the module docstring)."""

    model_config = _REQUEST
    role: str = Field(min_length=1)
    content: str | list[ContentBlock]


# --- tools, tool choice, thinking ---------------------------------------------------------


class CustomTool(BaseModel):
    """A client tool: the only kind a neuron can call."""

    model_config = _REQUEST
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None  # the call's input must match ``input_schema``


class ServerTool(BaseModel):
    """A hosted tool (``web_search_…``, ``bash_…``, ``text_editor_…``); accepted, dropped."""

    model_config = _REQUEST
    type: str
    name: str | None = None


ToolSpec = Annotated[
    Annotated[CustomTool, Tag("custom")] | Annotated[ServerTool, Tag("other")],
    type_tag(frozenset({"custom"}), untyped=lambda _: "custom"),
]


class _ToolChoice(BaseModel):
    model_config = _REQUEST
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_ToolChoice):
    type: Literal["auto"]


class ToolChoiceAny(_ToolChoice):
    type: Literal["any"]


class ToolChoiceTool(_ToolChoice):
    type: Literal["tool"]
    name: str = Field(min_length=1)


class ToolChoiceNone(_ToolChoice):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class _Thinking(BaseModel):
    model_config = _REQUEST
    display: str | None = None  # "summarized" | "omitted"


class ThinkingEnabled(_Thinking):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingAdaptive(_Thinking):
    type: Literal["adaptive"]


class ThinkingDisabled(_Thinking):
    type: Literal["disabled"]


class ThinkingOther(_Thinking):
    """A thinking mode we do not know (``between_tools``, …): the template's default."""

    type: str


ThinkingConfig = Annotated[
    Annotated[ThinkingEnabled, Tag("enabled")]
    | Annotated[ThinkingAdaptive, Tag("adaptive")]
    | Annotated[ThinkingDisabled, Tag("disabled")]
    | Annotated[ThinkingOther, Tag("other")],
    type_tag(frozenset({"enabled", "adaptive", "disabled"})),
]


# --- structured outputs -------------------------------------------------------------------


class JsonOutputFormat(BaseModel):
    """``output_config.format`` (and the beta ``output_format``): the answer's JSON schema."""

    model_config = _REQUEST
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")  # ``schema`` shadows a BaseModel method


class OutputConfig(BaseModel):
    """``output_config``; ``effort`` is kept as sent (``low`` … ``max``, and any newer level)."""

    model_config = _REQUEST
    effort: str | None = None
    format: JsonOutputFormat | None = None


# --- requests -----------------------------------------------------------------------------


class CountTokensRequest(BaseModel):
    """``POST /v1/messages/count_tokens``: the conversation, without generation settings."""

    model_config = _REQUEST

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    output_format: JsonOutputFormat | None = None  # the beta's, before ``output_config``

    @property
    def thinking_disabled(self) -> bool:
        return isinstance(self.thinking, ThinkingDisabled)

    @property
    def omit_thinking(self) -> bool:
        """``display: "omitted"``: send thinking blocks with a signature but no text."""
        return self.thinking is not None and self.thinking.display == "omitted"


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None


# Tags pydantic puts in an error's location after a list index (or after a union field) to
# say which union member it tried; never field names there.
_TAGS = _BLOCKS | {"other", "custom", "auto", "any", "tool", "none", "enabled", "adaptive"}
_UNION_FIELDS = frozenset({"tool_choice", "thinking"})


M = TypeVar("M", bound=BaseModel)


def parse_messages_request(body: bytes | str | dict[str, Any]) -> MessagesRequest:
    """Validate a body; every failure is an InvalidRequest naming the field."""
    return _parse(MessagesRequest, body)


def parse_count_tokens_request(body: bytes | str | dict[str, Any]) -> CountTokensRequest:
    """Validate a count-tokens body; every failure is an InvalidRequest naming the field."""
    return _parse(CountTokensRequest, body)


def _parse(model: type[M], body: bytes | str | dict[str, Any]) -> M:
    try:
        if isinstance(body, dict):
            return model.model_validate(body)
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc, tags=_TAGS, tagged_fields=_UNION_FIELDS, deepest=True) from None


# --- errors -------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (for errors that are not ours)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(err: CortexError, request_id: str | None = None) -> dict[str, Any]:
    """The Anthropic error envelope for any CortexError."""
    return {
        "type": "error",
        "error": {"type": err.anthropic_type, "message": err.message},
        "request_id": request_id,
    }
