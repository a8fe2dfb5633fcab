"""``dynagen config show``: every resolved setting, its value and where it came from."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import load

app = typer.Typer(help="Inspect settings (file + DYNAGEN_* env vars + flags).", no_args_is_help=True)


@app.command("show")
def show(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Print every setting with its value and source (default, file, env, flag); secrets are masked."""
    from rich.console import Console
    from rich.table import Table

    from dynagen.core.settings import describe

    settings, sources = load(config)
    table = Table("setting", "value", "source")
    for key, value, source in describe(settings, sources):
        table.add_row(key, value, source)
    Console().print(table)
