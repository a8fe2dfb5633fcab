"""LLM commands: ``dynagen run llm``, ``dynagen train router`` and ``dynagen route score``.

Commands are plain functions registered by ``dynagen/app/cli/__init__.py`` and ``dynagen/app/cli/run.py``; heavy imports
(torch, transformers, Ray) stay inside them so ``--help`` is instant.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load, quiet_libraries
from dynagen.app.cli.options import LLM_FLAGS, JobArgs, job_options

route_app = typer.Typer(help="Score prompts with a router (how much each needs the large model).", no_args_is_help=True)


@job_options(LLM_FLAGS)
def run_llm(
    job: JobArgs,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
) -> None:
    """Answer every prompt with the small or the large model, as the router decides; write Parquet responses, a
    run summary (counts per route, realised large share, tokens/s per pool) and a readable report (runs/<id>.md).

    Rerunning the same command resumes: prompts already answered are skipped.
    """
    settings, _ = load(job.config, {**job.overrides, "ray.address": address})
    quiet_libraries()
    from jobs.run_llm import run_and_report

    code = run_and_report(settings, job.prompts, job.out, run_id=job.run_id, verbose=job.verbose)
    if code:
        raise typer.Exit(code)


def train_router(
    data: Annotated[Optional[str], typer.Option(help="Routing labels: Parquet with prompt, subject, weak_correct, strong_correct "
                                                "(default: ../shared/data/routing/mmlu_routing_train.parquet).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Artifact folder (default: models/router).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    cache: Annotated[Optional[str], typer.Option(help="Folder to cache prompt embeddings in (re-training skips encoding).")] = None,
) -> None:
    """Train the learned router (MiniLM encoder + heads) on the training split, calibrate its thresholds on the
    held-out split, and write the artifact. Reproduces the committed models/router."""
    quiet_libraries()
    from jobs.train_router import DEFAULT_DATA, DEFAULT_OUT
    from pipelines.training.router import train

    try:
        report = train(data or str(DEFAULT_DATA), out or str(DEFAULT_OUT), seed=seed, cache_dir=cache)
    except (FileNotFoundError, ValueError) as e:
        exit_with_error(str(e))
    typer.echo(f"router written to {report['out']}: validation APGR {report['val']['learned']['apgr']}, "
               f"CPT(50%) {report['val']['learned']['cpt50']}, CPT(80%) {report['val']['learned']['cpt80']} (one split: "
               "optimistic; `python bench/router.py --cv` estimates unseen prompts)")


@route_app.command("score")
def score(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Prompt shards (same sources as 'dynagen run llm').")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output Parquet file (local path or s3://bucket/key.parquet).")],
    router: Annotated[Optional[str], typer.Option(help="Router from the registry: learned (default), probe, random.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Write id, prompt, score for every row (score = how much the prompt needs the large model, 0..1; empty for rows
    that cannot be scored, with the reason in 'error'), to evaluate a router on any labelled set."""
    settings, _ = load(config, {"llm.router": router})
    quiet_libraries()
    from jobs.score_prompts import score_file

    try:
        n = score_file(settings, prompts, out)
    except Exception as e:  # shard, storage and router errors all come back as one line
        exit_with_error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    typer.echo(f"scored {n} rows → {out}")
