"""OpenAI wire shapes: chat completion requests, responses, stream chunks, errors.

Data shapes only, no I/O. Requests are validated strictly (a string where a number
belongs is a 400 naming the field); unknown fields are accepted and ignored, because
clients send many (``user``, ``logit_bias``, ``store`` …) that change nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, ValidationError, model_validator

from cortex.errors import CortexError, InvalidRequest

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


class StreamOptions(BaseModel):
    model_config = _REQUEST
    include_usage: bool = False
    # vLLM's: every chunk carries usage so far (the first one the prompt's token count).
    continuous_usage_stats: bool = False


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class ChatCompletionRequest(BaseModel):
    model_config = _REQUEST

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: Probability | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    min_tokens: int | None = Field(default=None, ge=0)
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
        raise invalid_from_validation(exc) from None


def type_tag(
    known: frozenset[str], *, untyped: Callable[[dict[str, Any]], str | None] | None = None
) -> Any:
    """A discriminator: a known ``type`` picks its model, any other string type is ``other``.

    ``untyped`` names the branch for an object with no ``type`` at all (an Anthropic custom
    tool, a Responses message), or None for no branch.
    """

    def pick(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if kind is None and untyped is not None and isinstance(value, dict):
            return untyped(value)
        if not isinstance(kind, str):
            return None
        return kind if kind in known else "other"

    return Discriminator(pick)


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    if error["type"] == "json_invalid":
        return InvalidRequest(f"Request body is not valid JSON: {error['msg']}")
    loc = [str(part) for part in error["loc"] if not str(part).startswith(("function-", "list["))]
    # Drop the union-branch names pydantic adds ("str", "list[...]") from the path.
    loc = [part for part in loc if part not in {"str", "int", "float", "bool", "NamedToolChoice"}]
    param = ".".join(loc) if loc else None
    if error["type"] == "model_type" and not loc:
        return InvalidRequest("Request body must be a JSON object")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "Field required"
    elif error["type"] == "literal_error" and loc and loc[-1] == "role":
        message = f"Unknown role {error.get('input')!r}: {message}"
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


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
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[OutputToolCall] | None = None


class Choice(BaseModel):
    model_config = _SHAPE
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
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
