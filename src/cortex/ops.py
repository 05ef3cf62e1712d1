"""Operator commands of the ``cortex`` CLI: ``status``, ``models``, ``load``, ``unload``, ``pin``.

This module owns how an operator talks to a running gateway's fleet routes (``GET /fleet``,
``POST /fleet/load|unload|pin``) and prints the answers (the tables and lines come from
``cortex.ops_render``). The HTTP part is a thin httpx layer. Every failure (gateway down,
HTTP error envelope, a body that is not what the protocol says) ends as one line on stderr
and exit code 1, never a traceback. ``cortex.cli`` registers the public commands as is.
Each command takes ``--api-key`` (``CORTEX_API_KEY``), sent as ``Authorization: Bearer``:
a gateway with keys wants an admin key for ``load``, ``unload`` and ``pin``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import httpx
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cortex import sse
from cortex.ops_render import (
    progress_line,
    render_models,
    render_status,
    result_line,
    with_message,
)
from cortex.protocol.fleet import FleetActionResult, FleetProgress, FleetView

DEFAULT_GATEWAY = "http://127.0.0.1:31313"
QUICK_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# A load (or an unload draining in-flight requests) takes as long as it takes.
ACTION_TIMEOUT = httpx.Timeout(None, connect=5.0)
LOAD_STAGES = ("placing", "evicting", "resolving", "checking", "loading", "ready")

M = TypeVar("M", bound=BaseModel)


class GatewayError(Exception):
    """A failure to tell the operator, in one line."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)


# ── HTTP (thin) ──────────────────────────────────────────────────────────────────


def gateway_url(gateway: str) -> str:
    url = gateway.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _transport_error(base: str, exc: Exception) -> GatewayError:
    reason = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason:  # httpx trusts SSL_CERT_FILE over its own CAs
        return GatewayError(
            f"cannot verify the TLS certificate of the gateway at {base} ({reason}); "
            "point SSL_CERT_FILE at the CA that signed it"
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return GatewayError(
            f"cannot reach the gateway at {base} ({reason}); start one with `cortex serve` "
            "or `cortex up`, or point --gateway / CORTEX_GATEWAY at a running one"
        )
    if isinstance(exc, httpx.TimeoutException):
        return GatewayError(f"the gateway at {base} did not answer in time")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return GatewayError(f"bad gateway URL {base!r}: {reason}")
    return GatewayError(f"lost the connection to the gateway at {base}: {reason}")


def _envelope_message(text: str) -> str | None:
    """``error.message`` of an error envelope; None when ``text`` is not one."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else None


def _http_error(base: str, response: httpx.Response) -> GatewayError:
    snippet = " ".join(response.text.split())[:200]
    fallback = f"the gateway at {base} answered HTTP {response.status_code} {snippet}"
    return GatewayError(_envelope_message(response.text) or fallback)


def _parse(cls: type[M], raw: str | bytes, what: str) -> M:
    try:
        return cls.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise GatewayError(f"unexpected answer to {what}: {where}: {first['msg']}") from None


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def call(
    base: str,
    path: str,
    body: Any = None,
    timeout: httpx.Timeout = QUICK_TIMEOUT,
    api_key: str | None = None,
) -> str:
    """GET ``path`` (POST ``body`` if given); the text of a 2xx answer, else ``GatewayError``."""
    try:
        with httpx.Client(timeout=timeout, headers=_auth(api_key)) as client:
            method = "GET" if body is None else "POST"
            response = client.request(method, f"{base}{path}", json=body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(base, exc) from None
    if response.status_code >= 400:
        raise _http_error(base, response)
    return response.text


def stream_load(
    base: str,
    body: dict[str, Any],
    on_progress: Callable[[FleetProgress], None],
    api_key: str | None = None,
) -> FleetActionResult:
    """``POST /fleet/load`` as SSE: each ``progress`` to ``on_progress``, then the result."""
    what = "POST /fleet/load"
    headers = {"Accept": "text/event-stream", **_auth(api_key)}
    try:
        with (
            httpx.Client(timeout=ACTION_TIMEOUT) as client,
            client.stream("POST", f"{base}/fleet/load", json=body, headers=headers) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise _http_error(base, response)
            if "text/event-stream" not in response.headers.get("content-type", ""):
                return _parse(FleetActionResult, response.read(), what)
            for event in sse.events(response.iter_bytes()):
                data = event.data.decode("utf-8", "replace")
                if event.name == "progress":
                    on_progress(_parse(FleetProgress, data, what))
                elif event.name == "result":
                    return _parse(FleetActionResult, data, what)
                elif event.name == "error":
                    raise GatewayError(_envelope_message(data) or f"the load failed: {data}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(base, exc) from None
    except sse.EventTooLarge as exc:
        raise GatewayError(f"the gateway's answer to {what}: {exc.message}") from None
    raise GatewayError("the gateway ended the load without a result; see `cortex status`")


def fleet_action(
    base: str, path: str, body: Any, timeout: httpx.Timeout, api_key: str | None = None
) -> FleetActionResult:
    return _parse(FleetActionResult, call(base, path, body, timeout, api_key), f"POST {path}")


# ── commands ─────────────────────────────────────────────────────────────────────


@contextmanager
def _reporting() -> Iterator[None]:
    try:
        yield
    except GatewayError as exc:
        typer.echo(f"cortex: {exc.message}", err=True)
        raise typer.Exit(1) from None


PIPED_WIDTH = 160  # a pipe or a file has no width; rich's 80 would fold the tables


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, highlight=False, width=PIPED_WIDTH if piped else None)


GatewayOpt = Annotated[
    str,
    typer.Option("--gateway", "-g", envvar="CORTEX_GATEWAY", help="Gateway API URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the gateway's raw JSON.")]
ModelArg = Annotated[str, typer.Argument(help="Model id or alias.", show_default=False)]
NodeOpt = Annotated[str | None, typer.Option("--node", "-n", help="Node name.")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="CORTEX_API_KEY",
        help="The gateway's API key (an admin key for load, unload, pin).",
        show_default=False,
    ),
]


def _show_fleet(
    gateway: str,
    json_output: bool,
    render: Callable[[FleetView], RenderableType],
    key: str,
    api_key: str | None,
) -> None:
    with _reporting():
        base = gateway_url(gateway)
        raw = call(base, "/fleet", api_key=api_key)
        view = _parse(FleetView, raw, "GET /fleet")
        if not json_output:
            _console().print(render(view))
        else:  # the gateway's own JSON, fields this CLI does not know included
            data = json.loads(raw)
            typer.echo(json.dumps(data.get(key) if key else data, indent=2))


def status(
    gateway: GatewayOpt = DEFAULT_GATEWAY, json_output: JsonOpt = False, api_key: ApiKeyOpt = None
) -> None:
    """Show the fleet: nodes, memory, loaded models, loads in progress."""
    _show_fleet(gateway, json_output, lambda view: render_status(view, time.time()), "", api_key)


def models(
    gateway: GatewayOpt = DEFAULT_GATEWAY, json_output: JsonOpt = False, api_key: ApiKeyOpt = None
) -> None:
    """List the catalogue: every model, its state, and where it is or may be loaded."""
    _show_fleet(gateway, json_output, render_models, "models", api_key)


def load(
    model: ModelArg,
    node: NodeOpt = None,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Load MODEL (on --node, or where the gateway places it), evicting idle models if needed."""
    body: dict[str, Any] = {"model": model} | ({"node": node} if node else {})
    err = _console(stderr=True)
    progress = Progress(  # the live line only on a terminal; logs get the stage lines alone
        SpinnerColumn(),
        TextColumn("{task.fields[stage]}", style="bold cyan", markup=False),
        BarColumn(bar_width=24),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = progress.add_task(model, total=len(LOAD_STAGES), stage="starting")

    def on_progress(event: FleetProgress) -> None:
        progress.console.print(progress_line(event), soft_wrap=True)
        done = LOAD_STAGES.index(event.stage) + 1 if event.stage in LOAD_STAGES else None
        progress.update(task, completed=done, description=event.message, stage=event.stage)

    with _reporting():
        try:
            with progress:
                result = stream_load(gateway_url(gateway), body, on_progress, api_key)
        except KeyboardInterrupt:
            raise GatewayError(
                f"interrupted; the gateway may still finish loading {model} (see `cortex status`)"
            ) from None
        _console().print(result_line(result), soft_wrap=True)


def unload(
    model: ModelArg,
    node: NodeOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Do not wait for in-flight requests.")
    ] = False,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Unload MODEL from --node, or from every node it is loaded on."""
    body: dict[str, Any] = {"model": model, "force": force} | ({"node": node} if node else {})
    with _reporting():
        url = gateway_url(gateway)
        result = fleet_action(url, "/fleet/unload", body, ACTION_TIMEOUT, api_key)
        _console().print(result_line(result), soft_wrap=True)


def pin(
    model: ModelArg,
    unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin instead.")] = False,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Pin MODEL so eviction never picks it (or --unpin it)."""
    with _reporting():
        body = {"model": model, "pinned": not unpin}
        url = gateway_url(gateway)
        result = fleet_action(url, "/fleet/pin", body, QUICK_TIMEOUT, api_key)
        line = Text(f"{result.model} {'unpinned' if unpin else 'pinned'}")
        _console().print(with_message(line, result.message), soft_wrap=True)


def events(
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Wait for more (default), or stop.")
    ] = True,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    json_output: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Tail the fleet's lifecycle: loads, evictions and why, failed loads, nodes up and down."""
    with _reporting():
        base = gateway_url(gateway)
        query = "" if follow else "?follow=0"
        try:
            with (
                httpx.Client(timeout=ACTION_TIMEOUT) as client,
                client.stream("GET", f"{base}/fleet/events{query}", headers=_auth(api_key)) as got,
            ):
                if got.status_code >= 400:
                    got.read()
                    raise _http_error(base, got)
                for event in sse.events(got.iter_bytes()):
                    if not event.data:
                        continue
                    data = json.loads(event.data)
                    if json_output:
                        typer.echo(json.dumps(data))
                        continue
                    when = time.strftime("%H:%M:%S", time.localtime(data.get("at", 0)))
                    typer.echo(f"{when}  {event.name:<12} {data.get('message', '')}")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(base, exc) from None
