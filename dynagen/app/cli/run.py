"""``dynagen run images``: the batch jobs, run on an embedded local Ray or an existing cluster."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import load, quiet_libraries
from dynagen.app.cli.options import IMAGE_FLAGS, JobArgs, job_options

app = typer.Typer(help="Run batch generation jobs.", no_args_is_help=True)


@app.command("images")
@job_options(IMAGE_FLAGS)
def images(
    job: JobArgs,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
) -> None:
    """Generate an image per prompt at its predicted step count; write PNGs, Parquet metadata and a run report.

    Rerunning the same command resumes: prompts already written are skipped.
    """
    settings, _ = load(job.config, {**job.overrides, "ray.address": address})
    quiet_libraries()
    from jobs.run_images import run_and_report

    code = run_and_report(settings, job.prompts, job.out, run_id=job.run_id, verbose=job.verbose)
    if code:
        raise typer.Exit(code)

# ``dynagen run llm`` lives in dynagen/app/cli/llm.py (a light import: its heavy imports sit inside the command).
from dynagen.app.cli.llm import run_llm  # noqa: E402

app.command("llm")(run_llm)
