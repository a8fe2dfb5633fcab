"""The ``dynagen`` command line. Each command group lives in its own module; heavy imports stay inside commands."""

from __future__ import annotations

import typer

from dynagen.app.cli import audit, config, run, runs, stepsaver, train
from dynagen.app.cli import jobs as jobs_cli, nightly as nightly_cli, submit as submit_cli
from dynagen.app.cli import serve as serve_cli
from dynagen.app.cli import llm as llm_cli

app = typer.Typer(
    name="dynagen",
    help="Batch generation on Ray that spends compute only where a prompt needs it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(config.app, name="config")
app.add_typer(run.app, name="run")
app.add_typer(runs.app, name="runs")
app.add_typer(submit_cli.app, name="submit")
app.add_typer(jobs_cli.app, name="jobs")
app.command("nightly")(nightly_cli.nightly)
app.add_typer(train.app, name="train")
app.command("audit")(audit.audit)
app.command("calibrate")(stepsaver.calibrate)
app.command("steps")(stepsaver.steps)
app.command("serve")(serve_cli.serve)
train.app.command("stepsaver")(stepsaver.train_stepsaver)
train.app.command("router")(llm_cli.train_router)
app.add_typer(llm_cli.route_app, name="route")


def main() -> None:
    app()
