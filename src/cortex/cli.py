"""``cortex``: the gateway and the operator's command line, thin over ``run()``.

``serve`` runs the gateway from cortex.toml/models.toml; ``up`` runs a one-process
local fleet (gateway + embedded neuron); ``status``, ``models``, ``load``, ``unload``
and ``pin`` talk to a running gateway (see ``ops``); ``keys`` manages its API keys
(``cortex.keys``). Every flag is also a ``CORTEX_…`` environment variable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from cortex import __version__, keys, ops
from cortex.config import (
    CortexConfig,
    GatewaySection,
    ModelProfile,
    ModelsConfig,
    NeuronEntry,
    load_gateway_config,
    load_neuron_config,
    parse_listen,
)
from cortex.errors import ConfigError
from cortex.gateway.auth import load_entries
from cortex.server import UvicornService, run
from cortex.sim import cli as sim_cli
from cortex.versioning import add_version_option

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="cortex gateway and fleet CLI.",
)


add_version_option(app, "cortex", "cortex gateway and fleet CLI.")


app.command()(ops.status)
app.command()(ops.models)
app.command()(ops.load)
app.command()(ops.unload)
app.command()(ops.pin)
app.command()(ops.events)
app.command(name="sim")(sim_cli.sim)
app.add_typer(keys.app, name="keys")

DEMO_MODEL = "cortex-tiny"

LogOpt = Annotated[str, typer.Option("--log-level", envvar="CORTEX_LOG_LEVEL")]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll is noise


def _refuse(exc: ConfigError) -> typer.Exit:
    typer.echo(f"cortex: bad configuration: {exc.message}", err=True)
    return typer.Exit(2)


def run_gateway(
    config: CortexConfig,
    models: ModelsConfig,
    *,
    neuron: UvicornService | None = None,
) -> int:
    """Serve the gateway (and, for ``up``, an embedded neuron first) until a signal."""
    from cortex.gateway.app import GatewayApp, GatewayService

    service = GatewayService(
        GatewayApp(config, models),
        parse_listen(config.gateway.listen),
        parse_listen(config.gateway.metrics_listen),
    )
    return run([*([neuron] if neuron is not None else []), service])


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", envvar="CORTEX_CONFIG", help="cortex.toml")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            "--models", envvar="CORTEX_MODELS", help="models.toml (default: beside cortex.toml)"
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option(envvar="CORTEX_LISTEN", help="HOST:PORT [0.0.0.0:31313]")
    ] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(envvar="CORTEX_METRICS_LISTEN", help="HOST:PORT [0.0.0.0:31314]")
    ] = None,
    poll_interval: Annotated[str | None, typer.Option(envvar="CORTEX_POLL_INTERVAL")] = None,
    log_level: LogOpt = "info",
) -> None:
    """Run the gateway in front of the neurons in cortex.toml."""
    _configure_logging(log_level)
    overrides = {"listen": listen, "metrics_listen": metrics_listen, "poll_interval": poll_interval}
    try:
        cortex, profiles = load_gateway_config(config, models, overrides)
        load_entries(cortex)  # the API keys (and keys_file) are read now, refused if wrong
    except ConfigError as exc:
        raise _refuse(exc) from None
    if not cortex.neurons:
        typer.echo(
            "cortex: no [[neurons]] in the configuration; `cortex up` runs a local one", err=True
        )
        raise typer.Exit(2)
    raise typer.Exit(run_gateway(cortex, profiles))


@app.command()
def up(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", envvar="CORTEX_UP_MODEL", help="Model folder or cached repo id"
        ),
    ] = None,
    listen: Annotated[str, typer.Option(envvar="CORTEX_LISTEN")] = "127.0.0.1:31313",
    metrics_listen: Annotated[
        str, typer.Option(envvar="CORTEX_METRICS_LISTEN")
    ] = "127.0.0.1:31314",
    memory_budget: Annotated[str | None, typer.Option(envvar="NEURON_MEMORY_BUDGET")] = None,
    log_level: LogOpt = "warning",
) -> None:
    """A local fleet in one process: a gateway plus an embedded neuron (no config needed)."""
    _configure_logging(log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cortex.neuron.app import create_app
    from cortex.neuron.sources import default_id

    if model:
        profiles = [ModelProfile(id=default_id(source), source=source) for source in model]
    else:
        from cortex.testing import cached_model

        typer.echo("Preparing the tiny demo model (built once, then cached)…")
        path = str(cached_model(trained=True))
        profiles = [ModelProfile(id=DEMO_MODEL, source=path, pinned=True)]
    neuron_port = _free_port()
    try:
        neuron = load_neuron_config(
            None,
            {
                "name": "local",
                "listen": f"127.0.0.1:{neuron_port}",
                "memory_budget": memory_budget,
                "preload": [f"{profiles[0].id}={profiles[0].load_source}"],
                # The folders named here are the operator's choice: the neuron may read them.
                "allowed_paths": _folders([p.load_source for p in profiles]),
            },
        )
        gateway = CortexConfig(
            gateway=GatewaySection(listen=listen, metrics_listen=metrics_listen, poll_interval=1.0),
            neurons=[NeuronEntry(name="local", endpoint=f"http://127.0.0.1:{neuron_port}")],
        )
    except ConfigError as exc:
        raise _refuse(exc) from None
    except ValueError as exc:
        typer.echo(f"cortex: bad option: {exc}", err=True)
        raise typer.Exit(2) from None
    _banner(listen, metrics_listen, [p.id for p in profiles])
    import torch

    from cortex.neuron.sizing import default_cpu_threads

    torch.set_num_threads(neuron.cpu_threads or default_cpu_threads())  # as `neuron serve` does
    embedded = UvicornService(
        create_app(neuron),
        "127.0.0.1",
        neuron_port,
        log_level=log_level,
        grace=neuron.shutdown_grace,
    )
    code = run_gateway(gateway, ModelsConfig(models=profiles), neuron=embedded)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"cortex {__version__}")


def _folders(sources: list[str]) -> list[Path]:
    """The sources that are folders on this host (the others are repo ids or mistakes)."""
    found = []
    for source in sources:
        try:
            path = Path(source).expanduser()
            if path.is_dir():
                found.append(path)
        except (OSError, ValueError, RuntimeError):  # not a usable path: the load says why
            continue
    return found


def _banner(listen: str, metrics_listen: str, models: list[str]) -> None:
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}"
    body = json.dumps({"model": models[0], "messages": [{"role": "user", "content": "Say hello."}]})
    typer.echo(f"\ncortex gateway at {url} serving {', '.join(models)}")
    typer.echo(f"Prometheus metrics at http://{host}:{parse_listen(metrics_listen)[1]}/metrics")
    typer.echo("\nTry:\n")
    typer.echo(f"  curl -s {url}/v1/chat/completions \\")
    typer.echo("       -H 'Content-Type: application/json' \\")
    typer.echo(f"       -d '{body}'\n")
    typer.echo(f"Any OpenAI client:  OPENAI_BASE_URL={url}/v1")
    typer.echo(f"The fleet:          .venv/bin/cortex status --gateway {url}\n")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    app()
