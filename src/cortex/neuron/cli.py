"""``neuron``: the per-host daemon's command line, a thin layer over ``run()``.

Every flag is also an environment variable (``NEURON_LISTEN``, ``NEURON_MODEL_DIR`` …);
flags and variables override the config file, which overrides the defaults.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cortex.config import NeuronConfig, load_neuron_config
from cortex.errors import ConfigError
from cortex.neuron.sizing import default_cpu_threads
from cortex.versioning import add_version_option

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Serve Hugging Face models.",
)

DEMO_MODEL = "cortex-tiny"


add_version_option(app, "neuron", "Serve Hugging Face models.")


def run(config: NeuronConfig, *, log_level: str = "info", access_log: bool = False) -> None:
    """Serve until interrupted."""
    import torch

    from cortex.neuron.app import create_app
    from cortex.server import UvicornService
    from cortex.server import run as run_services

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    torch.set_num_threads(config.cpu_threads or default_cpu_threads())
    service = UvicornService(
        create_app(config),
        config.host,
        config.port,
        log_level=log_level,
        access_log=access_log,
        grace=config.shutdown_grace,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
    )
    code = run_services([service])
    if code:
        raise typer.Exit(code)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _load(config_file: Path | None, overrides: dict[str, Any]) -> NeuronConfig:
    try:
        return load_neuron_config(config_file, overrides)
    except ConfigError as exc:
        typer.echo(f"neuron: bad configuration: {exc.message}", err=True)
        raise typer.Exit(2) from None


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", envvar="NEURON_CONFIG", help="neuron.toml")
]
ListenOpt = Annotated[
    str | None, typer.Option("--listen", envvar="NEURON_LISTEN", help="HOST:PORT [0.0.0.0:13131]")
]
LogOpt = Annotated[str, typer.Option("--log-level", envvar="NEURON_LOG_LEVEL")]


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: ListenOpt = None,
    name: Annotated[str | None, typer.Option(envvar="NEURON_NAME", help="Node name")] = None,
    model_dir: Annotated[
        list[Path] | None,
        typer.Option("--model-dir", envvar="NEURON_MODEL_DIR", help="Folder of model folders"),
    ] = None,
    allowed_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--allowed-path",
            envvar="NEURON_ALLOWED_PATHS",
            help="Another folder a model may be loaded from by path (a model or a folder of them)",
        ),
    ] = None,
    preload: Annotated[
        list[str] | None,
        typer.Option(
            envvar="NEURON_PRELOAD", help="Model to load at start: NAME, PATH or ID=SOURCE"
        ),
    ] = None,
    memory_budget: Annotated[
        str | None, typer.Option(envvar="NEURON_MEMORY_BUDGET", help="Cap per device, e.g. 20GiB")
    ] = None,
    load_speed: Annotated[
        str | None,
        typer.Option(
            envvar="NEURON_LOAD_SPEED",
            help="How fast weights read from storage, e.g. 2GB/s (until a load is timed)",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="NEURON_ADMIN_TOKEN", help="Bearer token for lifecycle/admin routes"),
    ] = None,
    protect: Annotated[
        str | None,
        typer.Option(
            envvar="NEURON_PROTECT",
            help="Routes needing the admin token: admin (lifecycle/admin) or all (all but /health)",
        ),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(envvar="NEURON_DTYPE", help="auto|float32|bfloat16|float16")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            envvar="NEURON_ENGINE",
            help="auto (vLLM where it can run the model, else transformers)|vllm|transformers",
        ),
    ] = None,
    cpu_threads: Annotated[int | None, typer.Option(envvar="NEURON_CPU_THREADS")] = None,
    max_num_seqs: Annotated[
        int | None,
        typer.Option(envvar="NEURON_MAX_NUM_SEQS", help="Sequences batched together per model"),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(envvar="NEURON_MAX_QUEUE", help="Requests that may wait per model (then 429)"),
    ] = None,
    shutdown_grace: Annotated[
        str | None,
        typer.Option(
            envvar="NEURON_SHUTDOWN_GRACE", help="On SIGTERM, time to finish requests, e.g. 30s"
        ),
    ] = None,
    kv_cache_bytes: Annotated[
        str | None,
        typer.Option(envvar="NEURON_KV_CACHE_BYTES", help="KV cache memory per model, e.g. 2GiB"),
    ] = None,
    kv_cache_fraction: Annotated[
        float | None,
        typer.Option(
            envvar="NEURON_KV_CACHE_FRACTION",
            help="Without --kv-cache-bytes: share of the budget left after the weights [0.5]",
        ),
    ] = None,
    kv_block_size: Annotated[
        int | None,
        typer.Option(envvar="NEURON_KV_BLOCK_SIZE", help="Tokens per KV cache block [16]"),
    ] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            envvar="NEURON_PREFIX_CACHING",
            help="Reuse the KV of prompts' shared prefixes [on]",
        ),
    ] = None,
    allow_client_chat_template: Annotated[
        bool | None,
        typer.Option(
            "--allow-client-chat-template/--no-allow-client-chat-template",
            envvar="NEURON_ALLOW_CLIENT_CHAT_TEMPLATE",
            help="Render chat templates that requests bring (bounded in time and work)",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="NEURON_TLS_CERT", help="Serve HTTPS: PEM certificate chain"),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="NEURON_TLS_KEY", help="Serve HTTPS: its PEM key")
    ] = None,
    log_level: LogOpt = "info",
    access_log: Annotated[bool, typer.Option(envvar="NEURON_ACCESS_LOG")] = False,
) -> None:
    """Run the neuron daemon."""
    _configure_logging(log_level)
    overrides = {
        "listen": listen,
        "name": name,
        "model_dirs": model_dir,
        "allowed_paths": allowed_path,
        "preload": preload,
        "memory_budget": memory_budget,
        "load_speed": load_speed,
        "admin_token": admin_token,
        "protect": protect,
        "dtype": dtype,
        "engine": engine,
        "cpu_threads": cpu_threads,
        "max_num_seqs": max_num_seqs,
        "max_queue": max_queue,
        "allow_client_chat_template": allow_client_chat_template,
        "shutdown_grace": shutdown_grace,
        "kv_cache_bytes": kv_cache_bytes,
        "kv_cache_fraction": kv_cache_fraction,
        "kv_block_size": kv_block_size,
        "prefix_caching": prefix_caching,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    run(_load(config, overrides), log_level=log_level, access_log=access_log)


@app.command()
def demo(listen: ListenOpt = "127.0.0.1:13131", log_level: LogOpt = "warning") -> None:
    """Serve the built-in trained tiny model (built once into a cache) and print a curl."""
    _configure_logging(log_level)
    from cortex.testing import cached_model

    typer.echo("Preparing the tiny demo model (built once, then cached)…")
    path = cached_model(trained=True)
    preload = [f"{DEMO_MODEL}={path}"]  # outside any model dir: an allowed path
    config = _load(
        None, {"listen": listen, "preload": preload, "allowed_paths": [path], "name": "demo"}
    )
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    body = json.dumps(
        {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    )
    typer.echo(f"\nneuron serving {DEMO_MODEL} at {url}\n\nTry:\n")
    typer.echo(f"  curl -s {url}/v1/chat/completions \\")
    typer.echo("       -H 'Content-Type: application/json' \\")
    typer.echo(f"       -d '{body}'\n")
    run(config, log_level=log_level)


def main() -> None:
    app()
