"""The neuron's HTTP routes. Thin: parse → call the registry or service → project.

Every error leaves through ``web.exception_handlers`` in the OpenAI envelope; an
unexpected exception is logged with its traceback and answered with a plain 500 message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import torch
import transformers
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex import __version__
from cortex.config import NeuronConfig
from cortex.errors import CortexError, Unauthorized
from cortex.neuron import defrag, sources
from cortex.neuron.chat_service import ChatService
from cortex.neuron.devices import Device, discover
from cortex.neuron.metrics import CONTENT_TYPE, NeuronMetrics
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prompt import cancel_scope, render
from cortex.neuron.responses_service import ResponsesService
from cortex.protocol import openai
from cortex.protocol.lifecycle import (
    DefragResult,
    LoadProgress,
    LoadRequest,
    ModelRecord,
    ModelsView,
    NodeStatus,
    TokenizeRequest,
    TokenizeResult,
    UnloadRequest,
)
from cortex.protocol.responses import parse_responses_request
from cortex.web import (
    exception_handlers,
    json_response,
    progress_events,
    read_body,
    sse_response,
    unless_disconnected,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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
            exception_handlers=exception_handlers(),
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
        try:
            request = LoadRequest(model=model, source=source) if sep else LoadRequest(model=entry)
            record = await self.registry.load(request)
            log.info("preloaded %s", record.id)
        except ValidationError as exc:
            log.error("preloading %s failed: %s", entry, exc.errors()[0]["msg"])
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
        progress: asyncio.Queue[LoadProgress] = asyncio.Queue()
        work = self.registry.load(load, progress.put_nowait)
        return sse_response(progress_events(work, progress, _loaded))

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
        prompt = await self._rendering(
            request,
            asyncio.to_thread(
                render,
                tokenizer,
                body.messages,
                body.tools,
                body.chat_template_kwargs,
                client_templates=self.config.allow_client_chat_template,
            ),
        )
        if prompt is None:
            return Response(status_code=499)
        return json_response(TokenizeResult(count=len(prompt.ids)))

    # --- OpenAI ------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = openai.parse_request(openai.ChatCompletionRequest, await self._body(request))
        chat = await self._rendering(request, self.chat.prepare(body))
        if chat is None:
            return Response(status_code=499)
        if body.stream:
            return sse_response(self.chat.stream(chat))
        completion = await unless_disconnected(request, self.chat.complete(chat))
        if completion is None:  # the client left; nobody reads this
            return Response(status_code=499)
        return json_response(completion.model_dump(exclude_none=True))

    async def create_response(self, request: Request) -> Response:
        body = parse_responses_request(await self._body(request))
        prepared = await self._rendering(request, self.responses.prepare(body))
        if prepared is None:
            return Response(status_code=499)
        if body.stream:
            return sse_response(self.responses.stream(prepared), prepared.headers)
        result = await unless_disconnected(request, self.responses.complete(prepared))
        if result is None:
            return Response(status_code=499)
        return json_response(result, headers=prepared.headers)

    # --- helpers -------------------------------------------------------------------------

    async def _rendering(self, request: Request, work: Coroutine[Any, Any, T]) -> T | None:
        """``work`` (rendering a prompt), or None once the client leaves: a client's chat
        template rendering on a worker thread then stops at its next step."""
        with cancel_scope():
            return await unless_disconnected(request, work)

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


def _loaded(record: ModelRecord) -> tuple[str, ModelRecord]:
    return "record", record


def create_app(config: NeuronConfig, devices: list[Device] | None = None) -> Starlette:
    return NeuronApp(config, devices).build()
