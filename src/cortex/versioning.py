"""``--version`` for both programs' command lines (``cortex`` and ``neuron``), which must
print the same version that ``/node`` reports.

No ``from __future__ import annotations`` here: typer reads the option's annotation at run
time, and it names a callback local to ``add_version_option``."""

from typing import Annotated

import typer

from cortex import __version__


def add_version_option(app: typer.Typer, program: str, doc: str) -> None:
    """Give ``app`` an eager ``--version`` that prints ``<program> <version>`` and exits."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {__version__}")
            raise typer.Exit()

    def options(
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=show, is_eager=True, help="Print the version and exit."
            ),
        ] = False,
    ) -> None:
        pass

    options.__doc__ = doc
    app.callback()(options)
