"""``dynagen run images``: the batch jobs, run on an embedded local Ray or an existing cluster."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.cli.common import SchedulerName, exit_with_error, load, quiet_libraries

app = typer.Typer(help="Run batch generation jobs.", no_args_is_help=True)


# Job options shared with ``dynagen submit images`` (same flags, same meaning, whether local or on a cluster).
PromptsOpt = Annotated[str, typer.Option("--prompts", "-p", help="Prompt shards: a file, directory, glob or s3:// prefix "
                                         "(.parquet, .jsonl, .csv; column 'prompt', optional id, seed, negative_prompt, steps).")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Destination: a local folder or s3://bucket/prefix.")]
StepsOpt = Annotated[Optional[str], typer.Option(help="'auto' (StepSaver predicts per prompt) or a fixed step count.")]
ModelOpt = Annotated[Optional[str], typer.Option(help="diffusers pipeline folder (default: the embedded models/tiny-sd).")]
SchedulerOpt = Annotated[Optional[SchedulerName], typer.Option(help="Sampler.")]
LimitOpt = Annotated[Optional[int], typer.Option(help="Read at most N prompts.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(help="Images per diffusion batch.")]
SkipBadShardsOpt = Annotated[bool, typer.Option("--skip-bad-shards", help="Skip unreadable shards (recorded in the run summary) instead of stopping.")]
EarlyStopOpt = Annotated[Optional[bool], typer.Option("--early-stop/--no-early-stop", help="End each image once its "
                         "predicted clean image stops changing; --steps becomes the budget (settings: images.early_stop_*).")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")]
RunIdOpt = Annotated[Optional[str], typer.Option(help="Run id (default: UTC timestamp + random suffix).")]


def image_overrides(steps, model, scheduler, limit, batch_size, skip_bad_shards, early_stop=None) -> dict:
    """The image job's flags as dotted settings keys (None = not given)."""
    return {
        "images.steps": steps, "images.model": model, "images.scheduler": scheduler.value if scheduler else None,
        "images.limit": limit, "images.batch_size": batch_size, "images.skip_bad_shards": skip_bad_shards or None,
        "images.early_stop": early_stop,
    }


@app.command("images")
def images(
    prompts: PromptsOpt,
    out: OutOpt,
    steps: StepsOpt = None,
    model: ModelOpt = None,
    scheduler: SchedulerOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = None,
    skip_bad_shards: SkipBadShardsOpt = False,
    early_stop: EarlyStopOpt = None,
    config: ConfigOpt = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
    run_id: RunIdOpt = None,
) -> None:
    """Generate an image per prompt at its predicted step count; write PNGs, Parquet metadata and a run report.

    Rerunning the same command resumes: prompts already written are skipped.
    """
    settings, _ = load(config, {
        **image_overrides(steps, model, scheduler, limit, batch_size, skip_bad_shards, early_stop), "ray.address": address,
    })
    quiet_libraries()
    from jobs.run_images import run_and_report

    code = run_and_report(settings, prompts, out, run_id=run_id)
    if code:
        raise typer.Exit(code)

# ``dynagen run llm`` lives in dynagen/cli/llm.py (a light import: its heavy imports sit inside the command).
from dynagen.cli.llm import run_llm  # noqa: E402

app.command("llm")(run_llm)
