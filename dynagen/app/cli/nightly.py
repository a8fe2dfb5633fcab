"""``dynagen nightly``: run a night's declared batch (image and/or LLM jobs) on local Ray or a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load, quiet_libraries


def nightly(
    config: Annotated[Path, typer.Option("--config", "-c", help="Nightly batch file (see examples/nightly.yaml).")],
    date: Annotated[Optional[str], typer.Option(help="Night to run, YYYY-MM-DD (default: today, UTC). "
                                                     "Rerunning a night resumes it.")] = None,
    settings_config: Annotated[Optional[str], typer.Option("--settings", help="YAML settings file (base settings "
                                                                              "for every job).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray. "
                                                        "(To send the night to a cluster as a job: "
                                                        "'dynagen submit nightly'.)")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the file, settings and sources; run nothing.")] = False,
) -> None:
    """Run every job in the nightly file for one date, each into <output>/<job name>.

    Idempotent per date: finished prompts are skipped, so rerunning a finished or half-finished night completes it.
    Exits 1 with a per-job summary if any job failed, 2 on bad input (nothing run).
    """
    from pipelines.nightly import NightlyError, check_sources, job_settings, load_nightly, parse_date

    try:
        night = parse_date(date)
        spec = load_nightly(config)
    except NightlyError as e:
        exit_with_error(str(e))
    settings, _ = load(settings_config, {"ray.address": address})
    if check:
        try:
            check_sources(spec, night, {j.name: job_settings(spec, j, settings) for j in spec.jobs})
        except NightlyError as e:
            exit_with_error(str(e))
        typer.echo(f"{config}: ok ({len(spec.jobs)} jobs, output {spec.output_for(night)})")
        return
    quiet_libraries()
    from jobs.nightly import run_and_report

    code = run_and_report(spec, night, settings)
    if code:
        raise typer.Exit(code)
