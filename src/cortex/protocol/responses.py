"""OpenAI Responses API request shapes (``POST /v1/responses``).

Data shapes only, no I/O; the conversion to chat messages lives in
``neuron.responses_to_chat`` and the output side in ``neuron.wire.responses_projection``.
Validated strictly like ``protocol.openai`` (a string where a number belongs is a 400
naming the field); unknown fields are accepted and ignored. Input items and tools are
discriminated by ``type``: the kinds we act on are typed, every other kind (hosted tool
calls, ``item_reference``, hosted tools such as ``web_search``) is kept as a plain dict
so the converter can say what it ignored instead of refusing the request. ``text`` stays
a plain dict on the request (the reply echoes it as sent); ``response_format`` validates it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from cortex.protocol.openai import (
    Penalty,
    Probability,
    RepetitionPenalty,
    ResponseFormat,
    Seed,
    Temperature,
    TopK,
    TopP,
)
from cortex.protocol.openai_reply import Counted
from cortex.protocol.validation import INT32_MAX, invalid_request, type_tag

_REQUEST = ConfigDict(extra="allow", strict=True)


# --- content parts ------------------------------------------------------------------------


class InputText(BaseModel):
    model_config = _REQUEST
    type: Literal["input_text"]
    text: str


class OutputText(BaseModel):
    model_config = _REQUEST
    type: Literal["output_text"]
    text: str


class Refusal(BaseModel):
    model_config = _REQUEST
    type: Literal["refusal"]
    refusal: str


class InputImage(BaseModel):
    model_config = _REQUEST
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None


class InputFile(BaseModel):
    model_config = _REQUEST
    type: Literal["input_file"]
    file_id: str | None = None
    filename: str | None = None


ContentPart = Annotated[
    InputText | OutputText | Refusal | InputImage | InputFile, Field(discriminator="type")
]

# --- input items --------------------------------------------------------------------------


class MessageItem(BaseModel):
    """A message; ``type`` may be left out (an item with ``role`` and no type)."""

    model_config = _REQUEST
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ContentPart] | str
    id: str | None = None
    status: str | None = None


class FunctionCallItem(BaseModel):
    """A function call the model made earlier, replayed by the client."""

    model_config = _REQUEST
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    """The result of a function call, as text or as a list of parts."""

    model_config = _REQUEST
    type: Literal["function_call_output"]
    call_id: str | None = None
    output: list[ContentPart] | str
    id: str | None = None
    status: str | None = None


class SummaryText(BaseModel):
    model_config = _REQUEST
    type: Literal["summary_text"]
    text: str


class ReasoningText(BaseModel):
    model_config = _REQUEST
    type: Literal["reasoning_text", "text"]
    text: str


class ReasoningItem(BaseModel):
    """Reasoning from an earlier turn; ``encrypted_content`` is accepted and unused."""

    model_config = _REQUEST
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})


def _message_if_role(item: dict[str, Any]) -> str | None:
    """An input item without a ``type`` is a message when it has a ``role`` (EasyInputMessage)."""
    return "message" if "role" in item else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[dict[str, Any], Tag("other")],
    type_tag(_ITEMS, untyped=_message_if_role),
]

# --- tools --------------------------------------------------------------------------------


class FunctionTool(BaseModel):
    model_config = _REQUEST
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


NestedTool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[dict[str, Any], Tag("other")],
    type_tag(frozenset({"function"})),
]


class NamespaceTool(BaseModel):
    """Functions grouped under a name; calls come back as ``name`` plus ``namespace``."""

    model_config = _REQUEST
    type: Literal["namespace"]
    name: str = Field(min_length=1)
    description: str = ""
    tools: list[NestedTool]


ToolSpec = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[dict[str, Any], Tag("other")],
    type_tag(frozenset({"function", "namespace"})),
]


class FunctionChoice(BaseModel):
    model_config = _REQUEST
    type: Literal["function"]
    name: str = Field(min_length=1)


def _choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "mode"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return "function" if kind == "function" else "other"


ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("mode")]
    | Annotated[FunctionChoice, Tag("function")]
    | Annotated[dict[str, Any], Tag("other")],
    Discriminator(_choice_tag),
]


class ReasoningConfig(BaseModel):
    model_config = _REQUEST
    effort: str | None = None
    summary: str | None = None


# --- text.format: structured outputs --------------------------------------------------------


class TextFormat(BaseModel):
    """``{"type": "text"}``, the default: free text."""

    model_config = _REQUEST
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    """``{"type": "json_object"}``: any JSON object."""

    model_config = _REQUEST
    type: Literal["json_object"]


class JsonSchemaTextFormat(BaseModel):
    """Chat's ``response_format.json_schema`` flattened beside ``type`` (the Responses shape)."""

    model_config = _REQUEST
    type: Literal["json_schema"]
    name: str | None = None  # required by OpenAI; unused here, so not required
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")  # ``schema`` shadows a BaseModel method
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = _REQUEST
    format: (
        Annotated[TextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")]
        | None
    ) = None
    verbosity: str | None = None  # accepted, unused


class _Text(BaseModel):
    model_config = _REQUEST
    text: TextConfig | None = None


def response_format(text: dict[str, Any] | None) -> ResponseFormat | None:
    """A request's ``text`` as chat's ``response_format`` (None: free text).

    A malformed ``text.format`` is an InvalidRequest naming the field (``text.format.schema``).
    """
    try:
        config = _Text.model_validate({"text": text}).text
    except ValidationError as exc:
        raise invalid_request(
            exc,
            tags=frozenset({"text", "json_object", "json_schema"}),
            tagged_fields=frozenset({"format"}),
            deepest=True,
        ) from None
    fmt = config.format if config is not None else None
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JsonObjectFormat):
        return ResponseFormat(type="json_object")
    spec = {
        "name": fmt.name,
        "description": fmt.description,
        "schema": fmt.schema_,
        "strict": fmt.strict,
    }
    return ResponseFormat.model_validate({"type": "json_schema", "json_schema": spec})


# --- the request --------------------------------------------------------------------------


class ResponsesRequest(BaseModel):
    model_config = _REQUEST

    model: str = Field(min_length=1)
    input: list[InputItem] | str
    instructions: str | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    client_metadata: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Sampling extras our chat API accepts too.
    top_k: TopK | None = None
    min_p: Probability | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None


# Tags pydantic puts in an error's location after a list index (or after ``tool_choice``)
# to say which union member it tried; never field names there.
_TAGS = _ITEMS | {
    "other",
    "function",
    "namespace",
    "mode",
    "input_text",
    "output_text",
    "refusal",
    "input_image",
    "input_file",
}
_TAGGED_FIELDS = frozenset({"tool_choice"})


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Validate a JSON body; every failure is an InvalidRequest naming the field.

    Like ``openai.parse_request``, but it reports the most specific error (the one deepest
    in the body) and drops the union branch and tag names pydantic adds to locations, so
    a bad call id reads ``input.2.call_id`` rather than ``input.2.function_call.call_id``.
    """
    try:
        request = ResponsesRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc, tags=_TAGS, tagged_fields=_TAGGED_FIELDS, deepest=True) from None
    response_format(request.text)  # a malformed ``text.format`` is refused here, before any work
    return request


# --- what the gateway reads of a Responses stream ----------------------------------------


class StreamEvent(BaseModel):
    """One event of a Responses stream, as far as the gateway reads it: its type, and the
    final ``response`` (with its usage) on ``response.completed`` and its kin."""

    model_config = ConfigDict(extra="ignore", cache_strings="keys")  # as openai_reply
    type: str = ""
    response: Counted | None = None

    @property
    def has_output(self) -> bool:
        """Generated output: a text, reasoning or call-arguments delta."""
        return self.type.endswith(".delta")
