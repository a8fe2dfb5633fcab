"""``dynagen runs list|show DEST``: the run history a destination holds (local folder or s3://)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load

app = typer.Typer(help="Past runs of a destination: list them, show one.", no_args_is_help=True)

Dest = Annotated[str, typer.Argument(help="Output root: a folder or s3://bucket/prefix.")]
Config = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (S3 settings).")]


def _runs(dest: str, config: str | None):
    from dynagen.core.storage import Storage, StorageError
    from pipelines.history import list_runs

    settings, _ = load(config)
    store = Storage(dest, settings.storage)
    try:
        store.check()
        return store, list_runs(store)
    except StorageError as e:
        exit_with_error(str(e))


@app.command("list")
def list_(dest: Dest, config: Config = None) -> None:
    """One line per run, oldest first: id, start (UTC), status, ok/failed/skipped, rate, steps histogram."""
    from pipelines.history import run_line

    _, runs = _runs(dest, config)
    if not runs:
        exit_with_error(f"no runs recorded at {dest} (no runs/*.json)", 1)
    for rec in runs:
        typer.echo(run_line(rec))


@app.command("show")
def show(
    dest: Dest,
    run_id: Annotated[Optional[str], typer.Argument(
        help="Run id or a unique prefix (default: the latest run that generated or failed rows).")] = None,
    config: Config = None,
    open_report: Annotated[bool, typer.Option("--open", help="Open the run's HTML report in a browser.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
) -> None:
    """A run's summary (counts, rates, per step count, failures, what it was made from)."""
    import json

    from pipelines.history import HistoryError, find_run, run_details

    store, runs = _runs(dest, config)
    try:
        rec = find_run(runs, run_id)
    except HistoryError as e:
        exit_with_error(str(e), 1)
    typer.echo(json.dumps(rec, indent=2) if as_json else "\n".join(run_details(rec, store)))
    if open_report:
        _open(store, rec["run_id"])


def _open(store, run_id: str) -> None:
    """Local reports open in place; an S3 report is copied to a temp file first (browsers can't read s3://)."""
    import tempfile
    import webbrowser
    from pathlib import Path

    key = f"runs/{run_id}.html"
    try:
        data = store.get_bytes(key)
    except Exception:  # noqa: BLE001 - missing object/file: one line
        exit_with_error(f"no report for run {run_id} ({store.uri(key)}; LLM runs have none)", 1)
    if store.s3:
        path = Path(tempfile.mkdtemp(prefix="dynagen-report-")) / f"{run_id}.html"
        path.write_bytes(data)
    else:
        path = Path(store.uri(key))
    typer.echo(f"opening {path}")
    if not webbrowser.open(path.resolve().as_uri()):
        typer.echo("no browser found: open the file above yourself", err=True)
