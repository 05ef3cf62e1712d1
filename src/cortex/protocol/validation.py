"""How requests are validated: a pydantic ``ValidationError`` → the one ``InvalidRequest``
a client reads (400), and ``type_tag``, the discriminator of every ``type``-tagged union.

The one home of the validation-error wording of every dialect: the message names the
field as a dotted path (``messages.0.content``), free of the names pydantic adds for union
branches (``str``, ``list[...]``, ``function-...``) and for discriminated-union tags
(``tool_use``, ``function_call``): each protocol module passes its own tags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Discriminator, ValidationError

from cortex.errors import InvalidRequest

INT32_MAX = 2**31 - 1  # the largest count, length or id a request may carry

_BRANCH_PREFIXES = ("function-", "list[", "literal[")
_BRANCHES = frozenset({"str", "int", "float", "bool", "NamedToolChoice"})


def invalid_request(
    exc: ValidationError,
    *,
    tags: frozenset[str] = frozenset(),
    tagged_fields: frozenset[str] = frozenset(),
    deepest: bool = False,
) -> InvalidRequest:
    """The error to answer with.

    ``tags`` are the discriminator values of the protocol's unions; one is dropped from a
    location where it follows a list index or one of ``tagged_fields``. ``deepest`` reports
    the error deepest in the body (the most specific one when a union's every branch
    failed) instead of the first.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(f"Request body is not valid JSON: {first['msg']}")
    deepest = deepest and bool(first["loc"])
    cleaned = [(_clean(e["loc"], tags, tagged_fields), e) for e in errors]
    loc, error = max(cleaned, key=lambda pair: len(pair[0])) if deepest else cleaned[0]
    if error["type"] == "model_type" and not loc:
        return InvalidRequest("Request body must be a JSON object")
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "missing":
        message = "Field required"
    elif kind == "literal_error" and loc and loc[-1] == "role":
        message = f"Unknown role {error.get('input')!r}: {message}"
    elif kind == "union_tag_not_found":
        message = "Field required: every entry needs a string 'type'"
        if loc[:1] == ["input"]:
            message += " (a message may give just its 'role')"
        loc = [*loc, "type"]
    elif kind == "union_tag_invalid":
        message = f"Unknown type {_ctx(error).get('tag')!r}"
        loc = [*loc, "type"]
    elif deepest and sum(1 for other, _ in cleaned if other == loc) > 1:
        message = "Input should be a string or an array"  # every branch of ``str | list`` failed
    param = ".".join(loc) or None
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


def _ctx(error: Any) -> dict[str, Any]:
    ctx = error.get("ctx")
    return ctx if isinstance(ctx, dict) else {}


def _clean(
    loc: tuple[int | str, ...], tags: frozenset[str], tagged_fields: frozenset[str]
) -> list[str]:
    out: list[str] = []
    previous: int | str = ""
    for part in loc:
        text = str(part)
        branch = text.startswith(_BRANCH_PREFIXES) or text in _BRANCHES
        tag = text in tags and (isinstance(previous, int) or previous in tagged_fields)
        if not branch:
            previous = "" if tag else part  # a field follows a tag, never another tag
        if not (branch or tag):
            out.append(text)
    return out


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
