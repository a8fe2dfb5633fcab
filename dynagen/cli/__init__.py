"""The ``dynagen`` command line. Each command group lives in its own module; heavy imports stay inside commands."""

from __future__ import annotations

import typer

from dynagen.cli import config, run

app = typer.Typer(
    name="dynagen",
    help="Batch generation on Ray that spends compute only where a prompt needs it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config.app, name="config")
app.add_typer(run.app, name="run")


def main() -> None:
    app()
