"""OpenAI embeddings wire shapes: ``POST /v1/embeddings`` and its reply.

Data shapes only, no I/O. As for chat, requests are validated strictly and unknown fields
are accepted and ignored (``user`` among them). What needs the model to check (token ids
in its vocabulary, an input within its context, ``dimensions`` within its width) is
checked where the model is known (``neuron.embedding.service``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cortex.protocol.openai import TokenId
from cortex.protocol.validation import INT32_MAX, invalid_request

_REQUEST = ConfigDict(extra="allow", strict=True)
_SHAPE = ConfigDict(extra="allow")

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request
_FORMS = "a string, an array of strings, an array of token ids or an array of such arrays"
_NAMES = {str: "string", list: "array of token ids"}

# One text, several texts, one text as token ids, several as token ids (OpenAI's four forms).
EmbeddingInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class EmbeddingRequest(BaseModel):
    model_config = _REQUEST

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    # Matryoshka truncation: the first ``dimensions`` numbers of each vector (re-normalised
    # where the model normalises); at most the model's width.
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    user: str | None = None
    # Declared so that ``stream: true`` is refused by name rather than ignored.
    stream: bool | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: object) -> object:
        check_input(value)
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("embeddings are not streamed; leave stream unset or false")
        return value

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: texts, or token id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [value]
        return value


def check_input(value: object) -> None:
    """Raise ValueError saying what is wrong with ``input``, in words a client can act on."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return
    if not isinstance(value, list):
        raise ValueError(f"must be {_FORMS}")
    if not value:
        raise ValueError("must not be an empty array")
    if isinstance(value[0], int) and not isinstance(value[0], bool):
        _check_ids(value, "")
        return
    if not isinstance(value[0], str | list):
        raise ValueError(f"must be {_FORMS}")
    if len(value) > MAX_INPUTS:
        raise ValueError(f"must hold at most {MAX_INPUTS} inputs, got {len(value)}")
    kind = type(value[0])
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            raise ValueError(
                f"item {i} is not a {_NAMES[kind]} like item 0: one array holds one kind"
            )
        if not item:
            raise ValueError(f"item {i} is an empty {_NAMES[kind]}; every input needs content")
        if isinstance(item, list):
            _check_ids(item, f"item {i}: ")


def _is_token_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= INT32_MAX


def _check_ids(ids: list[object], where: str) -> None:
    for i, token in enumerate(ids):
        if not _is_token_id(token):
            raise ValueError(
                f"{where}token {i} ({token!r}) is not a token id: an integer from 0 to {INT32_MAX}"
            )


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Validate a JSON body; every failure is an InvalidRequest naming the field."""
    try:
        return EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc, deepest=True) from None


# --- the reply -----------------------------------------------------------------------------


class Embedding(BaseModel):
    model_config = _SHAPE
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or with ``encoding_format: base64`` their little-endian float32 bytes in base64.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    model_config = _SHAPE
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    model_config = _SHAPE
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
