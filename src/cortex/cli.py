"""``cortex``: the gateway's command line (the gateway itself arrives with its issue)."""

from __future__ import annotations

import typer

from cortex import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="cortex gateway and fleet CLI.")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"cortex {__version__}")


def main() -> None:
    app()
