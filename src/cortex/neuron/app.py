"""The neuron's HTTP routes. Thin: parse → call the registry or service → project.

Every error leaves through ``web.exception_handlers`` in the OpenAI envelope; an
unexpected exception is logged with its traceback and answered with a plain 500 message.

Access: with an ``admin_token``, the lifecycle and admin routes ask for it
(``Authorization: Bearer``, compared in constant time); with ``protect = "all"`` every
route does, but ``/health``, a liveness probe that tells nothing. A missing or wrong token
is a 401 with ``WWW-Authenticate: Bearer``, before the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

import psutil
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
from cortex.neuron import defrag, engines, sources
from cortex.neuron.chat_service import ChatService
from cortex.neuron.completions_service import CompletionsService
from cortex.neuron.devices import Device, discover
from cortex.neuron.embedding.service import EmbeddingsService
from cortex.neuron.metrics import CONTENT_TYPE, NeuronMetrics
from cortex.neuron.models import ModelRegistry
from cortex.neuron.prompt import cancel_scope, render
from cortex.neuron.responses_service import ResponsesService
from cortex.protocol import openai
from cortex.protocol.completions import CompletionRequest
from cortex.protocol.embeddings import parse_embedding_request
from cortex.protocol.lifecycle import (
    DefragResult,
    LoadProgress,
    LoadRequest,
    ModelRecord,
    ModelsView,
    NodeStatus,
    SleepRequest,
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

Handler = Callable[[Request], Awaitable[Response]]
# Who may call a route: anyone; whoever has the token when protect = "all"; only with it.
Access = Literal["open", "data", "admin"]


def engine_name() -> str:
    """The engines this node can run models on, with their versions."""
    name = f"transformers {transformers.__version__}, torch {torch.__version__}"
    vllm = engines.vllm_version()
    return name if vllm is None else f"{name}, vllm {vllm}"


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
        self.embedder = EmbeddingsService(self.registry)
        self.completions = CompletionsService(self.registry)

    def build(self) -> Starlette:
        routes: list[tuple[str, Handler, str, Access]] = [
            ("/health", self.health, "GET", "open"),
            ("/node", self.node, "GET", "data"),
            ("/models", self.models, "GET", "data"),
            ("/models/load", self.load, "POST", "admin"),
            ("/models/unload", self.unload, "POST", "admin"),
            ("/models/sleep", self.sleep, "POST", "admin"),
            ("/models/wake", self.wake, "POST", "admin"),
            ("/admin/defrag", self.defrag, "POST", "admin"),
            ("/tokenize", self.tokenize, "POST", "data"),
            ("/metrics", self.prometheus, "GET", "data"),
            ("/v1/models", self.openai_models, "GET", "data"),
            ("/v1/chat/completions", self.chat_completions, "POST", "data"),
            ("/v1/responses", self.create_response, "POST", "data"),
            ("/v1/embeddings", self.create_embeddings, "POST", "data"),
            ("/v1/completions", self.text_completions, "POST", "data"),
        ]
        return Starlette(
            routes=[
                Route(path, self._guarded(handler, access), methods=[method])
                for path, handler, method, access in routes
            ],
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
            host_memory_free=int(psutil.virtual_memory().available),
            load_speed=self.registry.load_speed.value,
        )
        return json_response(status)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        found = await asyncio.to_thread(sources.available, self.registry.places)
        return json_response(ModelsView(loaded=self.registry.records(), available=found))

    async def openai_models(self, request: Request) -> Response:
        cards = [
            openai.ModelCard(
                id=r.id, created=int(r.loaded_at or 0), owned_by=self.config.name, type=r.type
            )
            for r in self.registry.records()
            if r.state == "ready"
        ]
        return json_response(openai.ModelList(data=cards))

    # --- lifecycle ---------------------------------------------------------------------

    async def load(self, request: Request) -> Response:
        load = openai.parse_request(LoadRequest, await self._body(request))
        if "text/event-stream" not in request.headers.get("accept", ""):
            return json_response(await self.registry.load(load))
        progress: asyncio.Queue[LoadProgress] = asyncio.Queue()
        work = self.registry.load(load, progress.put_nowait)
        return sse_response(progress_events(work, progress, _loaded))

    async def unload(self, request: Request) -> Response:
        unload = openai.parse_request(UnloadRequest, await self._body(request))
        return json_response(await self.registry.unload(unload.model, force=unload.force))

    async def sleep(self, request: Request) -> Response:
        body = openai.parse_request(SleepRequest, await self._body(request))
        return json_response(await self.registry.sleeper.sleep(body.model))

    async def wake(self, request: Request) -> Response:
        body = openai.parse_request(SleepRequest, await self._body(request))
        return json_response(await self.registry.sleeper.wake(body.model))

    async def defrag(self, request: Request) -> Response:
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

    async def text_completions(self, request: Request) -> Response:
        body = openai.parse_request(CompletionRequest, await self._body(request))
        prepared = await self._rendering(request, self.completions.prepare(body))
        if prepared is None:
            return Response(status_code=499)
        if body.stream:
            return sse_response(self.completions.stream(prepared))
        result = await unless_disconnected(request, self.completions.complete(prepared))
        if result is None:  # the client left; nobody reads this
            return Response(status_code=499)
        return json_response(result)

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

    async def create_embeddings(self, request: Request) -> Response:
        body = parse_embedding_request(await self._body(request))
        result = await unless_disconnected(request, self.embedder.create(body))
        if result is None:  # the client left; its inputs were dropped
            return Response(status_code=499)
        return json_response(result)

    # --- helpers -------------------------------------------------------------------------

    async def _rendering(self, request: Request, work: Coroutine[Any, Any, T]) -> T | None:
        """``work`` (rendering a prompt), or None once the client leaves: a client's chat
        template rendering on a worker thread then stops at its next step."""
        with cancel_scope():
            return await unless_disconnected(request, work)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.config.max_request_bytes)

    def _guarded(self, handler: Handler, access: Access) -> Handler:
        """``handler``, asking for the admin token first where ``access`` and the config say."""
        token = self.config.admin_token
        if token is None or access == "open" or (access == "data" and self.config.protect != "all"):
            return handler
        expected = token.encode()

        async def guarded(request: Request) -> Response:
            _authorize(request, expected)
            return await handler(request)

        return guarded


def _authorize(request: Request, expected: bytes) -> None:
    """Raise 401 unless the request carries ``Authorization: Bearer <expected>``."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Header values arrive as latin-1 text: these are the bytes the client sent.
    sent = given.strip().encode("latin-1", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent, expected):
        raise Unauthorized(
            "This route needs the neuron's admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _loaded(record: ModelRecord) -> tuple[str, ModelRecord]:
    return "record", record


def create_app(config: NeuronConfig, devices: list[Device] | None = None) -> Starlette:
    return NeuronApp(config, devices).build()
