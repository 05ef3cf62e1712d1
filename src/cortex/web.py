"""HTTP plumbing both programs' Starlette routes share: bounded bodies, JSON replies, the
error handlers, SSE answers of long operations, disconnects.

Neither the neuron nor the gateway imports the other; what they share about HTTP
lives here (and data shapes in ``protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cortex import sse
from cortex.errors import CortexError, EngineFailure, InvalidRequest, NotFound, RequestTooLarge
from cortex.protocol import openai

log = logging.getLogger(__name__)
T = TypeVar("T")
P = TypeVar("P")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_none=False).encode()
    else:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(err: CortexError, envelope: Callable[[CortexError], dict[str, Any]]) -> Response:
    return json_response(envelope(err), status=err.status, headers=err.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise RequestTooLarge(
                f"Request body of {declared} bytes is over the {limit}-byte limit"
            )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (call after the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work``; cancel it and return None if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Let the work's own cleanup (closing its engine stream) run before returning.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return None
    return task.result()


async def progress_of(task: asyncio.Future[Any], progress: asyncio.Queue[P]) -> AsyncIterator[P]:
    """What ``task`` puts on ``progress`` as it runs, in order; ends once ``task`` is done."""
    while not task.done():
        getter = asyncio.ensure_future(progress.get())
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    while not progress.empty():
        yield progress.get_nowait()


def sse_response(events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Response:
    """A streamed ``text/event-stream`` answer of ``events`` (encoded by ``cortex.sse``)."""
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**sse.HEADERS, **(headers or {})}
    )


async def progress_events(
    work: Coroutine[Any, Any, T],
    progress: asyncio.Queue[P],
    result: Callable[[T], tuple[str, BaseModel]],
) -> AsyncIterator[bytes]:
    """SSE of a long operation: a ``progress`` event for each thing ``work`` puts on
    ``progress``, then its result as ``result`` names it, or an ``error`` event (the OpenAI
    envelope plus the HTTP ``status`` it would have had). The work goes on if the client
    leaves; its outcome is then read by nobody."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    async for event in progress_of(task, progress):
        yield sse.encode(_dump(event), "progress")
    error = task.exception()
    if error is None:
        name, payload = result(task.result())
        yield sse.encode(payload.model_dump(), name)
    else:
        err = error if isinstance(error, CortexError) else EngineFailure(str(error))
        yield sse.encode(openai.error_body(err) | {"status": err.status}, "error")


def _dump(event: Any) -> Any:
    return event.model_dump() if isinstance(event, BaseModel) else event


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's handlers for both programs' control routes: every error in the OpenAI
    envelope; an unexpected exception logged with its traceback, answered with a plain 500."""
    return {CortexError: _on_error, Exception: _on_error, 404: _not_found, 405: _not_found}


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CortexError):
        return error_response(exc, openai.error_body)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(EngineFailure(f"Internal error: {type(exc).__name__}"), openai.error_body)


async def _not_found(request: Request, exc: Exception) -> Response:
    if getattr(exc, "status_code", 404) == 405:
        err = InvalidRequest(f"Method {request.method} is not allowed on {request.url.path}")
        return json_response(openai.error_body(err), status=405)
    return error_response(NotFound(f"No route {request.url.path}"), openai.error_body)
