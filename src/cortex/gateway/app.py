"""The gateway's HTTP surface. Thin: the hot routes go straight to ``Proxy`` on the
gateway's own HTTP server; the rest (catalogue, fleet operations, liveness) is a small
Starlette app reached through the ASGI bridge.

Every error leaves in the envelope of the API its path belongs to: Anthropic's under
``/v1/messages`` (whatever the error: a wrong method, a body over the limit, one that
does not parse, a bug), OpenAI's everywhere else. ``HEAD`` on any path answers 200
(Claude Code probes ``HEAD /`` and preconnects with ``HEAD`` on other paths).

With API keys (``gateway.auth``): the model routes and ``/v1/models`` need a key, the
fleet's operator actions an admin key; ``/health``, ``GET /fleet`` (its status, events and
stats) and the console's files at ``/ui/`` stay open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
from functools import partial

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex import __version__
from cortex.config import CortexConfig, ModelsConfig
from cortex.errors import CortexError, InvalidRequest, NotFound, Unauthorized
from cortex.gateway.auth import Key, KeyTable
from cortex.gateway.bridge import call_asgi
from cortex.gateway.catalogue import Catalogue, anthropic_models, fleet_view, placements
from cortex.gateway.console import Console, refuse_other_sites
from cortex.gateway.dialects.anthropic import AnthropicDialect, count_tokens, request_id
from cortex.gateway.dialects.openai import OpenAIDialect
from cortex.gateway.fleet import Fleet
from cortex.gateway.http import HttpRequest, HttpServer, Responder
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neurons import NeuronClient
from cortex.gateway.proxy import Dialect, Proxy
from cortex.gateway.upstream import UpstreamPool
from cortex.protocol import openai
from cortex.protocol.anthropic import error_body as anthropic_error
from cortex.protocol.fleet import (
    FleetActionResult,
    FleetLoadRequest,
    FleetPinRequest,
    FleetProgress,
    FleetUnloadRequest,
)
from cortex.tls import neuron_contexts, server_context
from cortex.web import (
    exception_handlers,
    json_response,
    progress_events,
    read_body,
    sse_response,
)

log = logging.getLogger(__name__)

HOT_ROUTES: dict[str, Dialect] = {
    "/v1/chat/completions": OpenAIDialect("chat"),
    "/v1/responses": OpenAIDialect("responses"),
    "/v1/completions": OpenAIDialect("completions"),
    "/v1/embeddings": OpenAIDialect("embeddings"),
    "/v1/messages": AnthropicDialect(),
}


class GatewayApp:
    def __init__(
        self, config: CortexConfig, models: ModelsConfig, client: NeuronClient | None = None
    ) -> None:
        self.config = config
        self.keys = KeyTable(config)
        self.metrics = GatewayMetrics(keyed=self.keys.enabled)
        tls = neuron_contexts(config.neurons)  # one per https:// neuron, shared by every call
        gateway = config.gateway
        client = client or NeuronClient(
            poll_timeout=max(2.0, gateway.poll_interval), load_timeout=gateway.load_timeout, tls=tls
        )
        self.fleet = Fleet(config, models, self.metrics, client)
        self.pool = UpstreamPool(tls=tls)
        self.proxy = Proxy(self.fleet, self.pool, self.metrics, config.gateway)
        self.catalogue = Catalogue()
        self.control = self._control_app()

    async def handle(self, request: HttpRequest, responder: Responder) -> None:
        dialect = HOT_ROUTES.get(request.path)
        if dialect is not None and request.method == "POST":
            if not self.keys.enabled:
                await self.proxy.handle(request, responder, dialect)
                return
            try:
                key = self.keys.authenticate(request.headers)
            except Unauthorized as err:
                dialect.send_error(responder, err)
                return
            await self.proxy.handle(request, responder, dialect, key)
        elif request.path == "/v1/messages/count_tokens" and request.method == "POST":
            await self._count_tokens(request, responder)
        elif request.method == "HEAD":
            responder.respond(200, b"")
        elif is_anthropic(request.path):
            _refuse_anthropic(request, responder)
        else:
            await call_asgi(self.control, request, responder)

    def server(self) -> HttpServer:
        gateway = self.config.gateway
        return HttpServer(
            self.handle,
            error_payload,
            max_body=gateway.max_request_bytes,
            header_timeout=gateway.header_timeout,
            body_timeout=gateway.body_timeout,
            max_header_bytes=gateway.max_header_bytes,
            max_headers=gateway.max_headers,
        )

    async def start(self) -> None:
        """Poll the fleet once (and load pinned models) before serving."""
        await self.fleet.start()

    async def aclose(self) -> None:
        await self.fleet.aclose()
        await self.pool.aclose()

    def _control_app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/fleet", self.fleet_status, methods=["GET"]),
            Route("/fleet/events", self.fleet_events, methods=["GET"]),
            Route("/fleet/stats", self.fleet_stats, methods=["GET"]),
            Route("/fleet/load", self.fleet_load, methods=["POST"]),
            Route("/fleet/unload", self.fleet_unload, methods=["POST"]),
            Route("/fleet/pin", self.fleet_pin, methods=["POST"]),
            *Console().routes(),
        ]
        return Starlette(
            routes=routes,
            exception_handlers=exception_handlers(),
        )

    # --- routes ----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        up = sum(1 for n in self.fleet.snapshot.nodes.values() if n.up)
        return json_response(
            {"status": "ok", "nodes_up": up, "nodes": len(self.fleet.snapshot.nodes)}
        )

    async def models(self, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        key: Key | None = None
        if self.keys.enabled:
            try:
                key = self.keys.authenticate(request.scope["headers"])
            except Unauthorized as refused:
                if not anthropic:
                    raise
                body = anthropic_error(refused, request_id())
                return json_response(body, status=refused.status)
        if anthropic:
            params = request.query_params
            limit = params.get("limit", "20")
            if not limit.isdigit() or not 1 <= int(limit) <= 1000:
                err = InvalidRequest("limit: must be an integer from 1 to 1000", param="limit")
                return json_response(anthropic_error(err), status=400)
            page = anthropic_models(
                self.fleet.snapshot,
                int(limit),
                params.get("after_id"),
                params.get("before_id"),
                key,
            )
            return json_response(page)
        listing = self.catalogue.openai(self.fleet.snapshot, key)
        return Response(listing, media_type="application/json")

    async def fleet_status(self, request: Request) -> Response:
        return json_response(fleet_view(self.fleet.snapshot))

    async def fleet_events(self, request: Request) -> Response:
        """The fleet's lifecycle events as SSE: the last ones, then (unless ``follow=0``) each
        as it happens."""
        follow = request.query_params.get("follow", "1") not in ("0", "false", "no")
        return sse_response(self.fleet.events.stream(follow=follow))

    async def fleet_stats(self, request: Request) -> Response:
        """The last minutes of traffic per model (``gateway.recent``), for the console."""
        view = self.metrics.recent.view()
        return json_response({"version": __version__, "keys": self.keys.enabled, **view})

    async def fleet_load(self, request: Request) -> Response:
        self._operator(request)
        body = openai.parse_request(FleetLoadRequest, await self._body(request))
        model = self.fleet.snapshot.resolve(body.model)
        if "text/event-stream" in request.headers.get("accept", ""):
            progress: asyncio.Queue[FleetProgress] = asyncio.Queue()
            work = self.fleet.ensure(model, body.node, progress.put_nowait, lease=False)
            return sse_response(progress_events(work, progress, partial(_loaded, model)))
        node = await self.fleet.ensure(model, body.node, lease=False)
        return json_response(FleetActionResult(model=model, nodes=[node], state="ready"))

    async def fleet_unload(self, request: Request) -> Response:
        self._operator(request)
        body = openai.parse_request(FleetUnloadRequest, await self._body(request))
        model = self.fleet.snapshot.resolve(body.model)
        nodes = await self.fleet.unload(model, body.node, body.force)
        return json_response(FleetActionResult(model=model, nodes=nodes, state="unloaded"))

    async def fleet_pin(self, request: Request) -> Response:
        self._operator(request)
        body = openai.parse_request(FleetPinRequest, await self._body(request))
        model = self.fleet.snapshot.resolve(body.model)
        if not self.fleet.snapshot.is_known(model):
            raise NotFound(f"The model {model!r} does not exist", param="model")
        await self.fleet.pin(model, body.pinned)  # answers once the owner has applied it
        entry = next(p for p in placements(self.fleet.snapshot) if p.id == model)
        word = "pinned" if body.pinned else "unpinned"
        return json_response(
            FleetActionResult(model=model, nodes=entry.nodes, state=entry.state, message=word)
        )

    # --- helpers -----------------------------------------------------------------------

    async def _count_tokens(self, request: HttpRequest, responder: Responder) -> None:
        may_use = None
        if self.keys.enabled:
            try:
                may_use = self.keys.authenticate(request.headers).may_use
            except Unauthorized as err:
                HOT_ROUTES["/v1/messages"].send_error(responder, err)
                return
        await count_tokens(request, responder, self.fleet.snapshot, self.pool, may_use)

    def _operator(self, request: Request) -> None:
        """An operator action needs an admin key when the gateway has keys, and is never
        taken from another site's page."""
        refuse_other_sites(request)
        if self.keys.enabled:
            self.keys.operator(request.scope["headers"])

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.config.gateway.max_request_bytes)


def _loaded(model: str, node: str) -> tuple[str, FleetActionResult]:
    return "result", FleetActionResult(model=model, nodes=[node], state="ready")


def is_anthropic(path: str) -> bool:
    """Whether ``path`` belongs to Anthropic's API (its errors take Anthropic's envelope)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_payload(path: str, err: CortexError) -> tuple[bytes, bytes]:
    """The body for an error the HTTP server itself raises (bad framing, too large, a bug),
    in the envelope of the API ``path`` belongs to."""
    if is_anthropic(path):
        return b"application/json", json.dumps(anthropic_error(err, request_id())).encode()
    return b"application/json", json.dumps(openai.error_body(err)).encode()


def _refuse_anthropic(request: HttpRequest, responder: Responder) -> None:
    """A path under ``/v1/messages`` that no route takes, refused in Anthropic's envelope."""
    rid = request_id()
    headers = [(b"request-id", rid.encode())]
    if request.path in ("/v1/messages", "/v1/messages/count_tokens"):
        err: CortexError = InvalidRequest(
            f"Method {request.method} is not allowed on {request.path}: use POST"
        )
        status, headers = 405, [*headers, (b"allow", b"POST")]
    else:
        err = NotFound(f"No route {request.path}")
        status = err.status
    responder.respond(status, json.dumps(anthropic_error(err, rid)).encode(), headers=headers)


def metrics_server(metrics: GatewayMetrics) -> HttpServer:
    """``GET /metrics`` on the metrics port."""

    async def handle(request: HttpRequest, responder: Responder) -> None:
        if request.path == "/metrics":
            content_type = b"text/plain; version=0.0.4; charset=utf-8"
            responder.respond(200, metrics.render(), content_type)
        else:
            err = NotFound(f"No route {request.path}: metrics are at /metrics")
            responder.respond(404, json.dumps(openai.error_body(err)).encode())

    return HttpServer(handle, error_payload, max_body=1024 * 1024)


class GatewayService:
    """The gateway's API and metrics servers, after a first poll of the fleet."""

    def __init__(self, app: GatewayApp, listen: tuple[str, int], metrics_listen: tuple[str, int]):
        self.app = app
        self.listen = listen
        self.metrics_listen = metrics_listen
        self.http = app.server()
        self.metrics_http = metrics_server(app.metrics)

    async def start(self) -> None:
        await self.app.start()
        gateway, tls = self.app.config.gateway, None
        if gateway.tls_cert is not None and gateway.tls_key is not None:
            try:  # checked at config load; read again now, as it is on disk
                tls = server_context(gateway.tls_cert, gateway.tls_key)
            except ValueError as exc:
                raise RuntimeError(f"cannot serve HTTPS: {exc}") from None
        await self.metrics_http.start(*self.metrics_listen, tls)
        await self.http.start(*self.listen, tls)
        log.info("gateway listening on %s://%s:%d", "https" if tls else "http", *self.listen)
        if not self.app.keys.enabled and not is_loopback(self.listen[0]):
            log.warning(
                "no API keys: anyone who can reach %s:%d may use every model and the operator "
                "routes; add [[keys]] or keys_file to cortex.toml (see `cortex keys add`)",
                *self.listen,
            )
        # SIGHUP reads the key file again; without one it is logged, never the end of the
        # process (systemd's ExecReload and a stray `kill -HUP` must not stop the gateway).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        if self.app.config.keys_file is None:
            log.info("SIGHUP: nothing to read again (cortex.toml names no keys_file)")
        else:
            self.app.keys.reload()

    def finished(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()  # runs until stopped

    async def stop(self) -> None:
        """Stop accepting; requests in flight get ``shutdown_grace`` to finish."""
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.http.stop(grace=self.app.config.gateway.shutdown_grace)
        await self.metrics_http.stop()
        await self.app.aclose()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address
