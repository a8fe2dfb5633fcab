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
    """Print every setting with the value a run uses and its source (default, file, env, flag, or the AWS env var an
    unset storage setting falls back to); secrets are masked. Piped: one tab-separated line per setting, never cut."""
    import sys

    from dynagen.core.settings import describe

    settings, sources = load(config)
    rows = describe(settings, sources)
    if not sys.stdout.isatty():  # for grep/cut: a table sized to 80 columns would cut or wrap long values
        for row in rows:
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("setting", "value", "source")
    for key, value, source in rows:
        table.add_row(key, value, source)
    Console().print(table)
