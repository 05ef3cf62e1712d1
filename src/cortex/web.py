"""HTTP plumbing both programs share: bounded bodies, JSON replies, disconnects.

Neither the neuron nor the gateway imports the other; what they share about HTTP
lives here (and data shapes in ``protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from cortex.errors import CortexError, InvalidRequest, RequestTooLarge

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


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event with a compact JSON body."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


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
