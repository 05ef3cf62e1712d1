"""The one exception tree of cortex.

Every failure a caller can be told about is a ``CortexError``; each API surface maps
it to its own envelope in exactly one place (``protocol.openai.error_body``,
``protocol.anthropic.error_body``). Nothing else decides status codes.

::

    CortexError                      500 api_error
    ├── ConfigError                  (start-up only: file, key, reason)
    ├── InvalidRequest               400 invalid_request_error
    │   ├── ContextLengthExceeded    400 (prompt + completion past the model's context)
    │   ├── RequestTimeout           408 (a head or body stopped arriving)
    │   └── RequestTooLarge          413 request_too_large
    │       ├── HeadTooLarge         431 (head over max_header_bytes / max_headers)
    │       └── UriTooLong           414 (the request target alone is over the limit)
    ├── Unauthorized                 401 authentication_error
    ├── Forbidden                    403 permission_error (a valid key without the right)
    ├── NotFound                     404 not_found_error
    │   ├── ModelNotFound            404 code model_not_found
    │   └── SourceNotFound           404 (no local folder / cache entry for a source)
    ├── Conflict                     409 (e.g. unloading a model that is loading)
    ├── Overloaded                   429 rate_limit_error, Retry-After
    ├── InsufficientMemory           507 (neuron: needed vs free bytes)
    ├── NoCapacity                   503 (gateway: no node can ever fit the model)
    ├── ModelLoadFailed              503 (the load raised; the reason is kept)
    ├── NeuronUnavailable            503
    ├── BadUpstream                  502 (a neuron's answer that does not parse)
    ├── UpstreamTimeout              504 timeout_error
    └── EngineFailure                500 (a device or generation error, said plainly)
"""

from __future__ import annotations

from typing import ClassVar


class CortexError(Exception):
    """Base of every error cortex reports to a caller."""

    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    anthropic_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        # Machine-readable figures that belong in the body (e.g. needed/free bytes).
        self.extra = extra or {}


class ConfigError(CortexError):
    """A config file or flag is wrong; raised at start, never over HTTP."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class InvalidRequest(CortexError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    status = 413
    anthropic_type = "request_too_large"
    default_code = "request_too_large"


class HeadTooLarge(RequestTooLarge):
    """The request head (or a body's trailers) is over ``max_header_bytes`` or ``max_headers``
    (the gateway's HTTP server)."""

    status = 431
    default_code = "request_header_fields_too_large"


class UriTooLong(RequestTooLarge):
    """The request target alone is over ``max_header_bytes``."""

    status = 414
    default_code = "uri_too_long"


class RequestTimeout(InvalidRequest):
    """A request's head or body stopped arriving (``header_timeout`` / ``body_timeout``)."""

    status = 408
    default_code = "request_timeout"


class Unauthorized(CortexError):
    status = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(CortexError):
    status = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"
    default_code = "permission_denied"


class NotFound(CortexError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class SourceNotFound(NotFound):
    default_code = "source_not_found"


class Conflict(CortexError):
    status = 409
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "conflict"


class Overloaded(CortexError):
    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InsufficientMemory(CortexError):
    status = 507
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    default_code = "insufficient_memory"


class NoCapacity(CortexError):
    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    default_code = "no_capacity"


class ModelLoadFailed(CortexError):
    status = 503
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "model_load_failed"


class NeuronUnavailable(CortexError):
    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    default_code = "unavailable"


class BadUpstream(CortexError):
    status = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "bad_upstream"


class UpstreamTimeout(CortexError):
    status = 504
    openai_type = "timeout_error"
    anthropic_type = "timeout_error"
    default_code = "timeout"


class EngineFailure(CortexError):
    status = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "engine_error"
