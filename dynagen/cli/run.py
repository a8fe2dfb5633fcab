"""``dynagen run images``: the batch jobs, run on an embedded local Ray or an existing cluster."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from dynagen.cli.common import exit_with_error, load, quiet_libraries

app = typer.Typer(help="Run batch generation jobs.", no_args_is_help=True)


class SchedulerName(str, Enum):
    ddim = "ddim"
    euler = "euler"
    dpmpp = "dpm++"


@app.command("images")
def images(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Prompt shards: a file, directory, glob or s3:// prefix "
                                         "(.parquet, .jsonl, .csv; column 'prompt', optional id, seed, negative_prompt, steps).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Destination: a local folder or s3://bucket/prefix.")],
    steps: Annotated[Optional[str], typer.Option(help="'auto' (StepSaver predicts per prompt) or a fixed step count.")] = None,
    model: Annotated[Optional[str], typer.Option(help="diffusers pipeline folder (default: the embedded models/tiny-sd).")] = None,
    scheduler: Annotated[Optional[SchedulerName], typer.Option(help="Sampler.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Read at most N prompts.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per diffusion batch.")] = None,
    skip_bad_shards: Annotated[bool, typer.Option("--skip-bad-shards", help="Skip unreadable shards (recorded in the run summary) instead of stopping.")] = False,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Run id (default: UTC timestamp + random suffix).")] = None,
) -> None:
    """Generate an image per prompt at its predicted step count; write PNGs, Parquet metadata and a run report.

    Rerunning the same command resumes: prompts already written are skipped.
    """
    settings, _ = load(config, {
        "images.steps": steps, "images.model": model, "images.scheduler": scheduler.value if scheduler else None,
        "images.limit": limit, "images.batch_size": batch_size, "images.skip_bad_shards": skip_bad_shards or None,
        "ray.address": address,
    })
    quiet_libraries()
    from jobs.run_images import run_and_report

    code = run_and_report(settings, prompts, out, run_id=run_id)
    if code:
        raise typer.Exit(code)
