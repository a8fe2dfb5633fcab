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
    n_images: Annotated[int, typer.Option(help="Rendered training images encoded once for the UNet stage.")] = 8_000,
    vae_fraction: Annotated[float, typer.Option(help="Share of --minutes spent training the VAE.")] = 0.2,
    vae_init_from: Annotated[str, typer.Option(help="Start the VAE stage from this tiny-sd folder's VAE.")] = "",
    init_from: Annotated[str, typer.Option(
        help="Resume: continue training this saved folder (a checkpoint of --out works; its VAE stays frozen).")] = "",
    eval_only: Annotated[bool, typer.Option(
        "--eval-only", help="Only evaluate --out: contact sheet, positions right, SSIM-vs-steps table.")] = False,
    sheet: Annotated[str, typer.Option(help="Where to write the contact sheet PNG ('' = none).")] = "docs/tiny-sd-contact-sheet.png",
) -> None:
    """Train the embedded tiny text-to-image model on the synthetic world, then evaluate it.

    Training saves an EMA checkpoint to --out every 10 minutes; an interrupted run resumes with --init-from OUT.
    """
    from jobs.train_tiny_model import evaluate, run

    if not eval_only:
        summary = run(out, minutes=minutes, seed=seed, threads=threads, n_images=n_images, vae_fraction=vae_fraction,
                      vae_init_from=vae_init_from or None, init_from=init_from or None)
        typer.echo(f"trained {out}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if k != "loss_history"))
    evaluate(out, sheet=sheet or None, threads=threads)
