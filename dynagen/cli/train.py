"""``dynagen train ...``: reproduce the embedded models (each command wraps a job in jobs/)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Train the project's embedded models.", no_args_is_help=True)


@app.command("tiny-model")
def tiny_model(
    out: Annotated[str, typer.Option(help="Output diffusers folder.")] = "models/tiny-sd",
    minutes: Annotated[float, typer.Option(help="Training budget in wall-clock minutes.")] = 40.0,
    seed: Annotated[int, typer.Option(help="Seed for data rendering and init.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (1 on a shared machine, cores on an idle one).")] = 1,
    sheet: Annotated[str, typer.Option(help="Where to write the contact sheet PNG ('' = none).")] = "docs/tiny-sd-contact-sheet.png",
) -> None:
    """Train the embedded tiny text-to-image model on the synthetic world, then write a contact sheet."""
    from jobs.train_tiny_model import evaluate, run

    summary = run(out, minutes=minutes, seed=seed, threads=threads)
    typer.echo(f"trained {out}: {summary}")
    if sheet:
        typer.echo(f"evaluation: {evaluate(out, sheet=sheet, threads=threads)}")
