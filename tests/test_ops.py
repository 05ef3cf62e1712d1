"""``cortex status/models/load/unload/pin`` against a fake gateway: what the operator sees.

The fake is a small Starlette app served by uvicorn on 127.0.0.1 (a free port) in a thread;
the commands are registered on a local typer app the way ``cortex.cli`` registers them.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import typer
import uvicorn
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from typer.testing import CliRunner

from cortex import ops, ops_render
from cortex.protocol.fleet import FleetView

NOW = 1_700_000_000.0
GiB = 1024**3
MiB = 1024**2

FLEET: dict[str, Any] = {
    "nodes": [
        {
            "name": "gpu-1",
            "endpoint": "http://10.0.0.5:13131",
            "up": True,
            "last_seen": NOW - 3,
            "devices": [
                {
                    "index": 0,
                    "kind": "cuda",
                    "name": "NVIDIA RTX 4090",
                    "memory_total": 24 * GiB,
                    "memory_free": 24 * GiB - 1288490189,  # 1.2 GiB used
                    "memory_used_by_models": GiB + 512 * MiB,
                    "memory_budget": 20 * GiB,
                }
            ],
            "models": [
                {
                    "id": "qwen-7b",
                    "state": "ready",
                    "source": "Qwen/Qwen2.5-7B",
                    "memory_bytes": GiB,
                    "last_used_at": NOW - 12,
                    "in_flight": 2,
                    "queued": 1,
                    "engine": "vllm",
                    "kv_cache_bytes": 256 * MiB,
                    "kv_block_size": 16,
                    "kv_blocks_total": 512,
                    "kv_blocks_used": 12,
                    "prefix_cache_hit_ratio": 0.753,
                    "capabilities": {
                        "tools": True,
                        "reasoning": True,
                        "tool_format": "hermes",
                        "reasoning_format": "think",
                    },
                },
                {"id": "tiny", "state": "ready", "source": "/m/tiny", "memory_bytes": 512 * MiB},
                {"id": "llama-8b", "state": "loading", "source": "meta/llama"},
            ],
        },
        {
            "name": "cpu-box",
            "endpoint": "http://10.0.0.9:13131",
            "up": False,
            "last_seen": NOW - 95,
            "error": "connection refused",
        },
    ],
    "models": [
        {
            "id": "qwen-7b",
            "state": "ready",
            "nodes": ["gpu-1"],
            "placeable_on": ["gpu-1"],
            "pinned": True,
            "priority": 5,
            "aliases": ["qwen"],
        },
        {"id": "tiny", "state": "ready", "nodes": ["gpu-1"], "placeable_on": ["gpu-1", "cpu-box"]},
        {"id": "llama-8b", "state": "loading", "nodes": ["gpu-1"], "placeable_on": ["gpu-1"]},
        {"id": "llama-70b", "state": "available", "placeable_on": ["gpu-1"]},
    ],
    "loads": [{"model": "llama-8b", "node": "gpu-1", "started_at": NOW - 4, "evicting": ["tiny"]}],
    "strategy": "lru",
}


def _envelope(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


@dataclass
class FakeGateway:
    fleet: Any = field(default_factory=lambda: FLEET)
    load_events: list[tuple[str, Any]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)  # path → JSON body
    errors: dict[str, tuple[int, Any]] = field(default_factory=dict)  # path → status, body
    requests: list[tuple[str, Any, str]] = field(default_factory=list)  # path, body, accept
    authorization: list[str] = field(default_factory=list)  # each request's header ("" if none)


async def _handle(request: Request) -> Response:
    fake: FakeGateway = request.app.state.fake
    path = request.url.path
    body = await request.json() if request.method == "POST" else None
    accept = request.headers.get("accept", "")
    fake.requests.append((path, body, accept))
    fake.authorization.append(request.headers.get("authorization", ""))
    if path in fake.errors:
        status, error = fake.errors[path]
        if isinstance(error, str):
            return PlainTextResponse(error, status_code=status)
        return JSONResponse(error, status_code=status)
    if path == "/fleet":
        return JSONResponse(fake.fleet)
    if path == "/fleet/load" and "text/event-stream" in accept:

        async def events() -> AsyncIterator[str]:
            for event, data in fake.load_events:
                yield f"event: {event}\ndata: {json.dumps(data)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse(fake.answers[path])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Starlette]]:
    routes = [
        Route(p, _handle, methods=["GET", "POST"])
        for p in ("/fleet", "/fleet/load", "/fleet/unload", "/fleet/pin")
    ]
    app = Starlette(routes=routes)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", http="h11")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "fake gateway did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def fake(server: tuple[str, Starlette]) -> FakeGateway:
    server[1].state.fake = FakeGateway()
    return server[1].state.fake  # type: ignore[no-any-return]


@pytest.fixture
def url(server: tuple[str, Starlette], fake: FakeGateway) -> str:
    return server[0]


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    for command in (ops.status, ops.models, ops.load, ops.unload, ops.pin):
        app.command()(command)
    return app


def invoke(cli: typer.Typer, *args: str, **env: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "140", **env})
    # A clean exit (0 or typer.Exit) only; any other exception would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def render(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=140, color_system=None, highlight=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def row(text: str, start: str) -> str:
    """The table line whose first cell is ``start``."""
    for line in text.splitlines():
        if line.strip("│┃ ").startswith(start + " "):
            return line
    raise AssertionError(f"no row {start!r} in:\n{text}")


# ── pure rendering ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (1288490189, "1.2 GiB"),
        (24 * GiB, "24.0 GiB"),
        (1024 * GiB - 1, "1.0 TiB"),
        (3 * 1024**5, "3.0 PiB"),
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert ops_render.human_bytes(n) == text


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (None, "never"),
        (NOW - 3, "3s ago"),
        (NOW + 5, "0s ago"),
        (NOW - 95, "1m ago"),
        (NOW - 7200, "2h ago"),
        (NOW - 3 * 86400, "3d ago"),
    ],
)
def test_ago(ts: float | None, text: str) -> None:
    assert ops_render.ago(ts, NOW) == text


def test_status_rendering_shows_nodes_memory_and_models() -> None:
    text = render(ops_render.render_status(FleetView.model_validate(FLEET), NOW))
    gpu = row(text, "gpu-1")
    assert " up " in gpu
    assert "cuda:0 1.2 GiB / 24.0 GiB" in gpu
    lines = text.splitlines()
    assert "10.0.0.5:13131" in lines[lines.index(gpu) + 1]
    assert "  models 1.5 GiB " in lines[lines.index(gpu) + 1]
    assert "  budget 20.0 GiB " in lines[lines.index(gpu) + 2]
    assert "3s ago" in gpu
    cpu = row(text, "cpu-box")
    assert " down " in cpu
    assert "1m ago" in cpu
    assert "connection refused" in cpu
    qwen = row(text, "qwen-7b").split("│")
    assert [c.strip() for c in qwen[1:-1]] == [
        "qwen-7b",
        "gpu-1",
        "ready",
        "2",
        "1",
        "1.0 GiB",
        "12/512",
        "12s ago",
        "yes",
        "5",
    ]
    # The formats the neuron found, under the model's name; none for a model without them.
    # Under the KV blocks in use, the prefix cache's hit ratio.
    below_qwen = [c.strip() for c in lines[lines.index(row(text, "qwen-7b")) + 1].split("│")]
    assert below_qwen[1] == "tools: hermes · reasoning: think"
    assert below_qwen[3] == "vllm"  # the engine that runs it, under its state
    assert below_qwen[7] == "hit 75%"
    tiny_at = lines.index(row(text, "tiny"))
    assert "tools:" not in lines[tiny_at + 1]
    tiny = [c.strip() for c in row(text, "tiny").split("│")[1:-1]]
    assert tiny[2] == "ready"
    assert tiny[6] == "—"  # no paged KV cache reported: no blocks, no hit ratio
    assert tiny[7] == "never"
    assert tiny[8] == ""
    assert "hit" not in lines[tiny_at + 1]
    llama = [c.strip() for c in row(text, "llama-8b").split("│")[1:-1]]
    assert llama[2:7] == ["loading", "0", "0", "—", "—"]
    assert "Loads in progress" in text
    assert "4s ago" in text.split("Loads in progress")[1]
    assert "eviction strategy: lru" in text
    assert "1 more model(s) available" in text


def test_status_rendering_of_an_empty_fleet() -> None:
    text = render(ops_render.render_status(FleetView(nodes=[], models=[]), NOW))
    assert "No nodes" in text
    assert "No models loaded." in text
    assert "Loads in progress" not in text


def test_models_rendering_lists_the_catalogue() -> None:
    text = render(ops_render.render_models(FleetView.model_validate(FLEET)))
    cells = [c.strip() for c in row(text, "qwen-7b").split("│")[1:-1]]
    assert cells == ["qwen-7b", "ready", "gpu-1", "gpu-1", "qwen", "yes", "5"]
    assert "gpu-1, cpu-box" in row(text, "tiny")
    assert "available" in row(text, "llama-70b")


# ── commands against the fake gateway ────────────────────────────────────────────


def test_status_command(cli: typer.Typer, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "time", SimpleNamespace(time=lambda: NOW))
    result = invoke(cli, "status", "--gateway", url)
    assert result.exit_code == 0
    out = result.stdout
    assert " up " in row(out, "gpu-1")
    assert " down " in row(out, "cpu-box")
    assert "1.2 GiB / 24.0 GiB" in out
    assert "12s ago" in row(out, "qwen-7b")
    assert "never" in row(out, "tiny")


def test_status_json_prints_the_raw_fleet_view(cli: typer.Typer, url: str) -> None:
    result = invoke(cli, "status", "--json", "--gateway", url)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == FLEET


def test_gateway_comes_from_the_environment_without_a_scheme(
    cli: typer.Typer, url: str, fake: FakeGateway
) -> None:
    result = invoke(cli, "models", CORTEX_GATEWAY=url.removeprefix("http://"))
    assert result.exit_code == 0
    assert "llama-70b" in result.stdout
    assert "qwen" in row(result.stdout, "qwen-7b")
    assert fake.requests[0][0] == "/fleet"


def test_models_json(cli: typer.Typer, url: str) -> None:
    result = invoke(cli, "models", "--json", "-g", url)
    assert json.loads(result.stdout) == FLEET["models"]


def test_load_follows_the_stages_to_the_node(cli: typer.Typer, url: str, fake: FakeGateway) -> None:
    stages = [
        ("evicting", "evicting tiny to make room", 4 * GiB),
        ("resolving", "resolving meta/llama", None),
        ("checking", "checking memory", None),
        ("loading", "loading weights", None),
        ("ready", "ready", None),
    ]
    fake.load_events = [
        (
            "progress",
            {
                "model": "llama-8b",
                "node": "gpu-1",
                "stage": stage,
                "message": message,
                "needed_bytes": needed,
            },
        )
        for stage, message, needed in stages
    ] + [("result", {"model": "llama-8b", "nodes": ["gpu-1"], "state": "ready"})]
    result = invoke(cli, "load", "llama-8b", "--node", "gpu-1", "--gateway", url)
    assert result.exit_code == 0, result.output
    assert fake.requests == [
        ("/fleet/load", {"model": "llama-8b", "node": "gpu-1"}, "text/event-stream")
    ]
    lines = result.stderr.splitlines()
    for (stage, message, _), line in zip(stages, lines, strict=True):
        assert line.split()[:2] == [stage, "gpu-1"]
        assert message in line
    assert "(needs 4.0 GiB)" in lines[0]
    assert result.stdout.strip() == "llama-8b is ready on gpu-1"


def test_load_error_event_is_one_line_and_exit_1(
    cli: typer.Typer, url: str, fake: FakeGateway
) -> None:
    message = "Not enough memory on gpu-1: needs 40.0 GiB, 20.0 GiB free"
    fake.load_events = [
        (
            "progress",
            {"model": "llama-70b", "node": "gpu-1", "stage": "checking", "message": "checking"},
        ),
        ("error", {**_envelope(message, "server_error"), "status": 507}),
    ]
    result = invoke(cli, "load", "llama-70b", "-g", url)
    assert result.exit_code == 1
    assert fake.requests[0][1] == {"model": "llama-70b"}
    assert result.stderr.splitlines()[-1] == f"cortex: {message}"
    assert result.stdout == ""


def test_load_refused_before_streaming(cli: typer.Typer, url: str, fake: FakeGateway) -> None:
    fake.errors["/fleet/load"] = (404, _envelope("The model 'nope' does not exist"))
    result = invoke(cli, "load", "nope", "-g", url)
    assert result.exit_code == 1
    assert result.stderr == "cortex: The model 'nope' does not exist\n"


def test_load_stream_that_ends_without_a_result(
    cli: typer.Typer, url: str, fake: FakeGateway
) -> None:
    fake.load_events = [
        ("progress", {"model": "m", "node": "gpu-1", "stage": "loading", "message": "loading"})
    ]
    result = invoke(cli, "load", "m", "-g", url)
    assert result.exit_code == 1
    assert "without a result" in result.stderr.splitlines()[-1]


def test_unload(cli: typer.Typer, url: str, fake: FakeGateway) -> None:
    fake.answers["/fleet/unload"] = {"model": "tiny", "nodes": ["gpu-1"], "state": "unloaded"}
    result = invoke(cli, "unload", "tiny", "--node", "gpu-1", "--force", "-g", url)
    assert result.exit_code == 0
    assert fake.requests[0][:2] == (
        "/fleet/unload",
        {"model": "tiny", "force": True, "node": "gpu-1"},
    )
    assert result.stdout.strip() == "tiny unloaded from gpu-1"


def test_unload_conflict_gives_the_envelope_message(
    cli: typer.Typer, url: str, fake: FakeGateway
) -> None:
    fake.errors["/fleet/unload"] = (409, _envelope("llama-8b is loading; try again later"))
    result = invoke(cli, "unload", "llama-8b", "-g", url)
    assert result.exit_code == 1
    assert fake.requests[0][1] == {"model": "llama-8b", "force": False}
    assert result.stderr == "cortex: llama-8b is loading; try again later\n"


@pytest.mark.parametrize(
    ("flag", "pinned", "word"), [([], True, "pinned"), (["--unpin"], False, "unpinned")]
)
def test_pin_and_unpin(
    cli: typer.Typer, url: str, fake: FakeGateway, flag: list[str], pinned: bool, word: str
) -> None:
    fake.answers["/fleet/pin"] = {"model": "qwen-7b", "nodes": ["gpu-1"], "state": "ready"}
    result = invoke(cli, "pin", "qwen-7b", *flag, "-g", url)
    assert result.exit_code == 0
    assert fake.requests[0][1] == {"model": "qwen-7b", "pinned": pinned}
    assert result.stdout.strip() == f"qwen-7b {word}"


def test_the_api_key_is_sent_as_bearer_from_the_flag_or_the_environment(
    cli: typer.Typer, url: str, fake: FakeGateway
) -> None:
    fake.answers["/fleet/unload"] = {"model": "tiny", "nodes": ["gpu-1"], "state": "unloaded"}
    fake.load_events = [("result", {"model": "tiny", "nodes": ["gpu-1"], "state": "ready"})]
    assert invoke(cli, "unload", "tiny", "-g", url, "--api-key", "sk-flag").exit_code == 0
    assert invoke(cli, "load", "tiny", "-g", url, CORTEX_API_KEY="sk-env").exit_code == 0
    assert invoke(cli, "status", "-g", url, "--api-key", "sk-flag").exit_code == 0
    assert invoke(cli, "models", "-g", url).exit_code == 0
    assert fake.authorization == ["Bearer sk-flag", "Bearer sk-env", "Bearer sk-flag", ""]


def test_unreachable_gateway_says_where_and_how_to_start_one(cli: typer.Typer) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for command in (["status"], ["models"], ["load", "m"], ["unload", "m"], ["pin", "m"]):
        result = invoke(cli, *command, CORTEX_GATEWAY=f"http://127.0.0.1:{port}/")
        assert result.exit_code == 1
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert f"cannot reach the gateway at http://127.0.0.1:{port} " in line
        assert "`cortex serve`" in line
        assert "`cortex up`" in line


def test_http_error_without_an_envelope(cli: typer.Typer, url: str, fake: FakeGateway) -> None:
    fake.errors["/fleet"] = (502, "Bad Gateway\nupstream died")
    result = invoke(cli, "status", "-g", url)
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"cortex: the gateway at {url} answered HTTP 502 Bad Gateway upstream died\n"
    )


def test_a_body_that_is_not_a_fleet_view(cli: typer.Typer, url: str, fake: FakeGateway) -> None:
    fake.fleet = {"nodes": "none", "models": []}
    result = invoke(cli, "status", "-g", url)
    assert result.exit_code == 1
    assert result.stderr.startswith("cortex: unexpected answer to GET /fleet: nodes:")
    assert result.stderr.count("\n") == 1


def test_bad_gateway_url(cli: typer.Typer) -> None:
    result = invoke(cli, "status", "-g", "ftp://example")
    assert result.exit_code == 1
    assert result.stderr.startswith("cortex: bad gateway URL 'ftp://example'")
