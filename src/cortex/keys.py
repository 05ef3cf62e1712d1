"""``cortex keys``: the gateway's API keys, from the operator's shell.

``add`` makes a random key, prints it once on stdout, and appends only its sha256 to the
``keys_file`` that cortex.toml names (created if missing), so no file holds the secret.
``list`` shows names and rights, never secrets. A running gateway reads the file again on
SIGHUP (``gateway.auth``). ``cortex.cli`` registers ``app`` as ``cortex keys``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cortex.config import CortexConfig, KeyEntry, KeysFile, load_gateway_config
from cortex.errors import ConfigError
from cortex.gateway.auth import load_entries

KEY_PREFIX = "sk-cortex-"

app = typer.Typer(
    no_args_is_help=True,
    help="The gateway's API keys (in the keys_file that cortex.toml names).",
)

ConfigOpt = Annotated[
    Path, typer.Option("--config", envvar="CORTEX_CONFIG", help="cortex.toml naming keys_file")
]


class KeysError(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@contextmanager
def _reporting() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        typer.echo(f"cortex: bad configuration: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except KeysError as exc:
        typer.echo(f"cortex: {exc.message}", err=True)
        raise typer.Exit(1) from None


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _entries(config: Path) -> tuple[CortexConfig, Path, list[KeyEntry]]:
    """cortex.toml, its key file, and every key now (the file may not exist yet)."""
    cortex, _ = load_gateway_config(config)
    path = cortex.keys_file
    if path is None:
        raise KeysError(
            f'{config} names no keys_file; add a line such as keys_file = "keys.toml" '
            "at its top (before any [section])"
        )
    if not path.exists():
        return cortex, path, load_entries(cortex.model_copy(update={"keys_file": None}))
    return cortex, path, load_entries(cortex)


def entry_toml(entry: KeyEntry) -> str:
    """One ``[[keys]]`` block (strings as JSON strings, which TOML reads the same)."""

    def text(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["[[keys]]", f"name = {text(entry.name)}", f'key_sha256 = "{entry.key_sha256}"']
    if entry.models is not None:
        lines.append(f"models = [{', '.join(text(m) for m in entry.models)}]")
    if entry.admin:
        lines.append("admin = true")
    if entry.requests_per_minute is not None:
        lines.append(f"requests_per_minute = {entry.requests_per_minute}")
    if entry.max_concurrent is not None:
        lines.append(f"max_concurrent = {entry.max_concurrent}")
    return "\n".join(lines) + "\n"


def _append(path: Path, block: str) -> None:
    """The file with ``block`` at its end, checked, then put in place in one rename."""
    old = path.read_text() if path.exists() else ""
    new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + block
    try:
        KeysFile.model_validate(tomllib.loads(new))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise KeysError(f"the new entry would not read back ({exc}); {path} is unchanged") from None
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Shown in metrics and logs.", show_default=False)],
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Glob over model ids and aliases (repeat, or a,b); default: every model.",
        ),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="May use /fleet/load, /fleet/unload, /fleet/pin.")
    ] = False,
    requests_per_minute: Annotated[int | None, typer.Option(min=1)] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1)] = None,
    config: ConfigOpt = Path("cortex.toml"),
) -> None:
    """Make a new key NAME: print it once and add its sha256 to the key file."""
    with _reporting():
        _, path, existing = _entries(config)
        if any(entry.name == name for entry in existing):
            raise KeysError(f"a key named {name!r} exists already; pick another name")
        secret = new_key()
        patterns = [p.strip() for item in models or [] for p in item.split(",") if p.strip()]
        try:
            entry = KeyEntry(
                name=name,
                key_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                models=patterns or None,
                admin=admin,
                requests_per_minute=requests_per_minute,
                max_concurrent=max_concurrent,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise KeysError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        _append(path, entry_toml(entry))
    typer.echo(secret)
    typer.echo(
        f"Added key {name!r} to {path}. This is the only time the key is shown. A running "
        "gateway takes it on SIGHUP (kill -HUP <pid of cortex serve>).",
        err=True,
    )


@app.command("list")
def list_keys(config: ConfigOpt = Path("cortex.toml")) -> None:
    """The keys' names and rights (never their secrets)."""
    with _reporting():
        _, _, entries = _entries(config)
    for entry in entries:
        rights = [
            "models=" + (",".join(entry.models) if entry.models is not None else "*"),
            *(["admin"] if entry.admin else []),
            *(
                [f"requests_per_minute={entry.requests_per_minute}"]
                if entry.requests_per_minute
                else []
            ),
            *([f"max_concurrent={entry.max_concurrent}"] if entry.max_concurrent else []),
        ]
        typer.echo(f"{entry.name}\t{' '.join(rights)}")
