"""OpenAI wire shapes: chat completion requests, responses, stream chunks, errors.

Data shapes only, no I/O. Requests are validated strictly (a string where a number
belongs is a 400 naming the field); unknown fields are accepted and ignored, because
clients send many (``user``, ``logit_bias``, ``store`` …) that change nothing here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from cortex.errors import (
    Conflict,
    ContextLengthExceeded,
    CortexError,
    EngineFailure,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    NeuronUnavailable,
    NotFound,
    Overloaded,
    RequestTooLarge,
    SourceNotFound,
    Unauthorized,
    UpstreamTimeout,
)
from cortex.protocol.openai_reply import ErrorDetail, ErrorEnvelope
from cortex.protocol.validation import INT32_MAX, invalid_request

M = TypeVar("M", bound=BaseModel)

_REQUEST = ConfigDict(extra="allow", strict=True)
_SHAPE = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    """One part of a message's content list; only ``text`` parts render."""

    model_config = _REQUEST
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = _REQUEST
    name: str
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = _REQUEST
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = _REQUEST
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDef(BaseModel):
    model_config = _REQUEST
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _REQUEST
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _REQUEST
    name: str


class NamedToolChoice(BaseModel):
    model_config = _REQUEST
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must match (``strict`` is
    accepted and changes nothing: a constrained answer always matches)."""

    model_config = _REQUEST
    name: str | None = None
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute: read it as ``schema_``.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    model_config = _REQUEST
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` extension: exactly one constraint (checked with the
    model's format, ``neuron.structured.rules``); vLLM's whitespace switches are accepted and
    change nothing (constrained JSON never has free whitespace)."""

    model_config = _REQUEST
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    @property
    def json(self) -> dict[str, Any] | str | None:  # type: ignore[override]
        return self.json_


class StreamOptions(BaseModel):
    model_config = _REQUEST
    include_usage: bool = False
    # vLLM's: every chunk carries usage so far (the first one the prompt's token count).
    continuous_usage_stats: bool = False


# The sampling fields' ranges, shared with the Responses API so that a value one dialect
# accepts never fails the other. Integers that reach the engine's tensors are bounded: JSON
# integers have no limit, torch's are 64-bit. A length past INT32_MAX (max_tokens 2**64)
# is refused; one within it but past the context is clamped to the room left.
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# 0 is greedy, and so is anything below the engine's MIN_TEMPERATURE (1e-5): the limit of
# sampling as the temperature falls to 0, without dividing logits by a denormal.
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
# -1 and 0 mean off; a k past the vocabulary keeps every token.
TopK = Annotated[int, Field(ge=-1, le=INT32_MAX)]
# OpenAI's range, a signed 64-bit integer; the engine maps it onto torch's unsigned seeds.
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0)]
# A token id; whether it is in the model's vocabulary is checked once the model is known.
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class ChatCompletionRequest(BaseModel):
    model_config = _REQUEST

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: Probability | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)
    ignore_eos: bool = False
    # vLLM's name: at most this many tokens inside reasoning, then the model is made to close
    # it (its end-of-thinking token is forced) and answer.
    thinking_token_budget: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # OpenAI's "none" | "minimal" | "low" | "medium" | "high": whether (and for gpt-oss, how
    # hard) the model reasons, as the chat template's switches; chat_template_kwargs win.
    reasoning_effort: str | None = None
    # Which field carries reasoning in the reply (default: the neuron's setting).
    reasoning_field: Literal["both", "reasoning_content", "reasoning"] | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        """How many alternatives each token's logprobs list; None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)


def parse_request(model: type[M], body: bytes) -> M:
    """Validate a JSON body into ``model``; every failure is an InvalidRequest naming the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


# --- responses -------------------------------------------------------------------------


class CompletionTokensDetails(BaseModel):
    model_config = _SHAPE
    reasoning_tokens: int


class Usage(BaseModel):
    model_config = _SHAPE
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # OpenAI's, for a reply that reasoned: how many completion tokens were reasoning.
    completion_tokens_details: CompletionTokensDetails | None = None


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
        if reasoning_tokens
        else None,
    )


class OutputToolCall(BaseModel):
    model_config = _SHAPE
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    model_config = _SHAPE
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[OutputToolCall] | None = None

    @property
    def reasoning_text(self) -> str | None:
        """The reasoning, from whichever field carries it (neurons may send both)."""
        return self.reasoning_content if self.reasoning_content is not None else self.reasoning


class Choice(BaseModel):
    model_config = _SHAPE
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    stop_reason: str | int | None = None  # vLLM's: the stop string or token that ended it


class ChatCompletion(BaseModel):
    model_config = _SHAPE
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    model_config = _SHAPE
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    model_config = _SHAPE
    object: Literal["list"] = "list"
    data: list[ModelCard]


_BY_CODE: dict[str, type[CortexError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "model_not_found": ModelNotFound,
    "source_not_found": SourceNotFound,
    "insufficient_memory": InsufficientMemory,
}
_BY_STATUS: dict[int, type[CortexError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: RequestTooLarge,
    429: Overloaded,
    503: NeuronUnavailable,
    504: UpstreamTimeout,
    507: InsufficientMemory,
}


def error_from_body(status: int, body: bytes) -> CortexError:
    """The CortexError behind an answer of HTTP ``status`` (the inverse of ``error_body``).

    Picked by the envelope's ``code``, else by the status, else ``EngineFailure``; the
    envelope's extra figures (``prompt_tokens``, ``needed_bytes`` …) are kept in ``extra``.
    A body that is no envelope still gives an error, saying the status.
    """
    try:
        detail = ErrorEnvelope.model_validate_json(body).error or ErrorDetail()
    except ValidationError:
        detail = ErrorDetail()
    message = detail.message or f"The neuron answered HTTP {status}"
    kind = _BY_CODE.get(detail.code) if isinstance(detail.code, str) else None
    kind = kind or _BY_STATUS.get(status, EngineFailure)
    return kind(message, extra=dict(detail.model_extra or {}))


def error_body(err: CortexError) -> dict[str, Any]:
    """The OpenAI error envelope for any CortexError."""
    body: dict[str, Any] = {
        "message": err.message,
        "type": err.openai_type,
        "param": err.param,
        "code": err.code,
    }
    body.update(err.extra)
    return {"error": body}
