"""``dynagen jobs list|status|logs|stop``: look after jobs submitted with ``dynagen submit`` (Ray Jobs API)."""

from __future__ import annotations

from typing import Annotated

import typer

from dynagen.app.cli.common import exit_with_error
from dynagen.app.cli.submit import AddressOpt, TokenFileOpt, client_or_exit, follow_logs, wait_result

app = typer.Typer(help="List, inspect, follow and stop jobs on a Ray cluster.", no_args_is_help=True)

JobIdArg = Annotated[str, typer.Argument(help="Submission id printed by 'dynagen submit'.")]


def _info_or_exit(client, job_id: str, address: str):
    try:
        return client.get_job_info(job_id)
    except Exception as e:  # Ray raises RuntimeError with the HTTP body for unknown ids
        if "404" in str(e) or "does not exist" in str(e):
            exit_with_error(f"no job '{job_id}' on {address}")
        exit_with_error(f"asking {address} about job '{job_id}' failed: {' '.join(str(e).split())[:300]}")


def _when(ms: int | None) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


@app.command("list")
def list_jobs(address: AddressOpt, token_file: TokenFileOpt = None) -> None:
    """Every job the cluster knows, newest first: id, kind, status, start time, message."""
    from rich.console import Console
    from rich.table import Table

    client = client_or_exit(address, token_file)
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    # runtime_env (it holds forwarded secrets) and the entrypoint (long settings JSON) are deliberately not shown.
    table = Table("submission id", "kind", "status", "started (UTC)", "message")
    for j in jobs:
        kind = (j.metadata or {}).get("dynagen.kind", "")
        table.add_row(j.submission_id or j.job_id or "", kind, j.status.value, _when(j.start_time),
                      (j.message or "")[:80])
    Console(width=160).print(table)


@app.command("status")
def status(job_id: JobIdArg, address: AddressOpt, token_file: TokenFileOpt = None) -> None:
    """Print a job's status; exit 0 if it succeeded or is still going, 1 if it failed or was stopped."""
    from ray.job_submission import JobStatus

    client = client_or_exit(address, token_file)
    info = _info_or_exit(client, job_id, address)
    typer.echo(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    if info.status in (JobStatus.FAILED, JobStatus.STOPPED):
        raise typer.Exit(1)


@app.command("logs")
def logs(
    job_id: JobIdArg,
    address: AddressOpt,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
    token_file: TokenFileOpt = None,
) -> None:
    """Print a job's driver logs (a failed job's remote traceback included)."""
    client = client_or_exit(address, token_file)
    _info_or_exit(client, job_id, address)
    if follow:
        follow_logs(client, job_id)
        raise typer.Exit(wait_result(client, job_id))
    typer.echo(client.get_job_logs(job_id), nl=False)


@app.command("stop")
def stop(job_id: JobIdArg, address: AddressOpt, token_file: TokenFileOpt = None) -> None:
    """Ask the cluster to stop a running job (its finished work is kept; resubmitting resumes)."""
    client = client_or_exit(address, token_file)
    info = _info_or_exit(client, job_id, address)
    if info.status.is_terminal():
        typer.echo(f"{job_id}: already {info.status.value}")
        return
    client.stop_job(job_id)
    typer.echo(f"{job_id}: stop requested")
