"""OpenAI's legacy text completions (``POST /v1/completions``), as vLLM serves it.

Data shapes only, no I/O. The sampling fields take the very types of the chat request
(``protocol.openai``), so a value one endpoint accepts never fails the other. ``prompt`` is
a string, a list of strings, a list of token ids or a list of such lists; each prompt is a
choice set of its own, and choices are numbered prompt-major (prompt ``i``'s choice ``j`` is
``i * n + j``). ``logprobs`` is the legacy integer (how many alternatives per token, 0 to 5)
and comes back as ``{tokens, token_logprobs, top_logprobs, text_offset}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from cortex.protocol.openai import (
    Penalty,
    Probability,
    RepetitionPenalty,
    Seed,
    StreamOptions,
    Temperature,
    TokenId,
    TopK,
    TopP,
    Usage,
)
from cortex.protocol.validation import INT32_MAX

_REQUEST = ConfigDict(extra="allow", strict=True)
_SHAPE = ConfigDict(extra="allow")

# OpenAI's limit on ``logprobs`` in the legacy API.
MAX_LOGPROBS = 5
# At most this many choices (prompts × n) in one request: each is a sequence in the engine.
MAX_CHOICES = 128

Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]
_PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


class CompletionRequest(BaseModel):
    model_config = _REQUEST

    model: str = Field(min_length=1)
    prompt: Prompt
    suffix: str | None = None
    echo: bool = False
    # OpenAI's default; null means "as many as the context leaves", as in vLLM.
    max_tokens: int | None = Field(default=16, ge=1, le=INT32_MAX)
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
    n: int = Field(default=1, ge=1, le=16, validate_default=True)  # bounds the choices
    best_of: int | None = Field(default=None, ge=1, le=16)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt_shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Prompt:
        try:
            prompt: Prompt = handler(value)
        except ValidationError:
            # Every branch of the union failed: one sentence instead of four of pydantic's.
            raise ValueError(f"must be {_PROMPT_SHAPES}") from None
        if prompt == [] or any(part == [] for part in prompt if isinstance(part, list)):
            raise ValueError("must not be empty")
        return prompt

    @field_validator("n")
    @classmethod
    def _bounded_choices(cls, n: int, info: ValidationInfo) -> int:
        prompt = info.data.get("prompt")
        count = len(_split(prompt)) if prompt is not None else 1
        if count * n > MAX_CHOICES:
            raise ValueError(
                f"{count} prompts with n={n} make more than {MAX_CHOICES} choices in one request"
            )
        return n

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if best_of is not None and best_of != n:
            # Picking the best of several would need each choice scored whole; cortex returns
            # every choice it generates instead.
            raise ValueError(f"must equal n ({n}): cortex returns every choice it generates")
        return best_of

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """Each prompt on its own: its text, or its token ids."""
        return _split(self.prompt)

    @property
    def fill_in(self) -> str | None:
        """The suffix to fill in before; an empty one is none, as in OpenAI's API."""
        return self.suffix or None

    @property
    def completion_limit(self) -> int | None:
        return self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)


def _split(prompt: Prompt) -> list[str] | list[list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(part, int) for part in prompt):
        return [[part for part in prompt if isinstance(part, int)]]
    return prompt  # type: ignore[return-value]  # a list of strings or of id lists


# --- responses -------------------------------------------------------------------------


class CompletionLogprobs(BaseModel):
    """The legacy shape: per generated token its text, its logprob, the most likely
    alternatives (the token itself among them) and where it starts in the choice's text."""

    model_config = _SHAPE
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    model_config = _SHAPE
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM's: the stop string or token that ended it


class Completion(BaseModel):
    model_config = _SHAPE
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
