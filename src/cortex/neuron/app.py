"""The neuron's HTTP routes. Thin: parse → call the registry or service → project.

Every error leaves through ``_on_error`` in the OpenAI envelope; an unexpected
exception is logged with its traceback and answered with a plain 500 message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator

import torch
import transformers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cortex import __version__
from cortex.config import NeuronConfig
from cortex.errors import CortexError, EngineFailure, InvalidRequest, NotFound, Unauthorized
from cortex.neuron import defrag, sources
from cortex.neuron.devices import Device, discover
from cortex.neuron.metrics import CONTENT_TYPE, NeuronMetrics
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prompt import render
from cortex.neuron.responses import ResponsesService
from cortex.neuron.serving import ChatService
from cortex.protocol import openai
from cortex.protocol.lifecycle import (
    DefragResult,
    LoadProgress,
    LoadRequest,
    ModelsView,
    NodeStatus,
    TokenizeRequest,
    TokenizeResult,
    UnloadRequest,
)
from cortex.protocol.responses import parse_responses_request
from cortex.web import (
    error_response,
    json_response,
    progress_of,
    read_body,
    sse_event,
    unless_disconnected,
)

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def engine_name() -> str:
    return f"transformers {transformers.__version__}, torch {torch.__version__}"


class NeuronApp:
    """Routes bound to one registry; ``build()`` makes the ASGI app."""

    def __init__(self, config: NeuronConfig, devices: list[Device] | None = None) -> None:
        self.config = config
        self.metrics = NeuronMetrics()
        self.registry = ModelRegistry(
            config, devices if devices is not None else discover(), self.metrics
        )
        self.chat = ChatService(self.registry)
        self.responses = ResponsesService(self.registry)

    def build(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/node", self.node, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/models/load", self.load, methods=["POST"]),
            Route("/models/unload", self.unload, methods=["POST"]),
            Route("/admin/defrag", self.defrag, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/models", self.openai_models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/responses", self.create_response, methods=["POST"]),
        ]
        return Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={
                CortexError: self._on_error,
                Exception: self._on_error,
                404: self._not_found,
                405: self._not_found,
            },
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        preloads = [asyncio.create_task(self._preload(entry)) for entry in self.config.preload]
        await asyncio.sleep(0)  # let every preload register before the first request
        try:
            yield
        finally:
            for task in preloads:
                task.cancel()
            await self.registry.aclose()

    async def _preload(self, entry: str) -> None:
        model, sep, source = entry.partition("=")
        request = LoadRequest(model=model, source=source) if sep else LoadRequest(model=entry)
        try:
            record = await self.registry.load(request)
            log.info("preloaded %s", record.id)
        except CortexError as exc:
            log.error("preloading %s failed: %s", entry, exc.message)

    # --- liveness and status -----------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def node(self, request: Request) -> Response:
        status = NodeStatus(
            name=self.config.name,
            version=__version__,
            engine=engine_name(),
            devices=self.registry.device_infos(),
            models=self.registry.records(),
        )
        return json_response(status)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        found = await asyncio.to_thread(sources.available, self.config.model_dirs)
        return json_response(ModelsView(loaded=self.registry.records(), available=found))

    async def openai_models(self, request: Request) -> Response:
        cards = [
            openai.ModelCard(id=r.id, created=int(r.loaded_at or 0), owned_by=self.config.name)
            for r in self.registry.records()
            if r.state == "ready"
        ]
        return json_response(openai.ModelList(data=cards))

    # --- lifecycle ---------------------------------------------------------------------

    async def load(self, request: Request) -> Response:
        self._authorize(request)
        load = openai.parse_request(LoadRequest, await self._body(request))
        if "text/event-stream" not in request.headers.get("accept", ""):
            return json_response(await self.registry.load(load))
        return StreamingResponse(
            self._load_events(load), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def _load_events(self, load: LoadRequest) -> AsyncIterator[bytes]:
        progress: asyncio.Queue[LoadProgress] = asyncio.Queue()
        task = asyncio.create_task(self.registry.load(load, progress.put_nowait))
        # The load goes on if this client leaves; its outcome is then read by nobody.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        async for event in progress_of(task, progress):
            yield sse_event("progress", event.model_dump())
        error = task.exception()
        if error is None:
            yield sse_event("record", task.result().model_dump())
        else:
            err = error if isinstance(error, CortexError) else EngineFailure(str(error))
            yield sse_event("error", openai.error_body(err) | {"status": err.status})

    async def unload(self, request: Request) -> Response:
        self._authorize(request)
        unload = openai.parse_request(UnloadRequest, await self._body(request))
        return json_response(await self.registry.unload(unload.model, force=unload.force))

    async def defrag(self, request: Request) -> Response:
        self._authorize(request)
        freed = await asyncio.to_thread(defrag.release_caches, self.registry.devices)
        return json_response(DefragResult(freed_bytes=freed, devices=self.registry.device_infos()))

    async def tokenize(self, request: Request) -> Response:
        body = openai.parse_request(TokenizeRequest, await self._body(request))
        tokenizer = await self.registry.tokenizer_for(body.model, body.source)
        prompt = await asyncio.to_thread(
            render, tokenizer, body.messages, body.tools, body.chat_template_kwargs
        )
        return json_response(TokenizeResult(count=len(prompt.ids)))

    # --- OpenAI ------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = openai.parse_request(openai.ChatCompletionRequest, await self._body(request))
        chat = await self.chat.prepare(body)
        if body.stream:
            return StreamingResponse(
                self.chat.stream(chat), media_type="text/event-stream", headers=SSE_HEADERS
            )
        completion = await unless_disconnected(request, self.chat.complete(chat))
        if completion is None:  # the client left; nobody reads this
            return Response(status_code=499)
        return json_response(completion.model_dump(exclude_none=True))

    async def create_response(self, request: Request) -> Response:
        body = parse_responses_request(await self._body(request))
        prepared = await self.responses.prepare(body)
        if body.stream:
            return StreamingResponse(
                self.responses.stream(prepared),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **prepared.headers},
            )
        result = await unless_disconnected(request, self.responses.complete(prepared))
        if result is None:
            return Response(status_code=499)
        return json_response(result, headers=prepared.headers)

    # --- helpers -------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.config.max_request_bytes)

    def _authorize(self, request: Request) -> None:
        token = self.config.admin_token
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise Unauthorized(
                "This route needs the neuron's admin token as 'Authorization: Bearer <token>'"
            )

    async def _on_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, CortexError):
            return error_response(exc, openai.error_body)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            EngineFailure(f"Internal error: {type(exc).__name__}"), openai.error_body
        )

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            err: CortexError = InvalidRequest(f"Method {request.method} is not allowed here")
            return json_response(openai.error_body(err), status=405)
        return error_response(NotFound(f"No route {request.url.path}"), openai.error_body)


def create_app(config: NeuronConfig, devices: list[Device] | None = None) -> Starlette:
    return NeuronApp(config, devices).build()
