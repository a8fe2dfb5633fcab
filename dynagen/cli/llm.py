"""LLM commands: ``dynagen run llm``, ``dynagen train router`` and ``dynagen route score``.

Commands are plain functions registered by ``dynagen/cli/__init__.py`` and ``dynagen/cli/run.py``; heavy imports
(torch, transformers, Ray) stay inside them so ``--help`` is instant.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.cli.common import exit_with_error, load, quiet_libraries

route_app = typer.Typer(help="Score prompts with a router (how much each needs the large model).", no_args_is_help=True)


def _share(value: Optional[float]) -> Optional[float]:
    # Checked here too so the message names the flag; the settings schema checks it again.
    if value is not None and not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"must be in [0, 1], got {value}")
    return value


def run_llm(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Prompt shards: a file, directory, glob or s3:// prefix "
                                         "(.parquet, .jsonl, .csv; column 'prompt', optional 'id').")],
    out: Annotated[str, typer.Option("--out", "-o", help="Destination: a local folder or s3://bucket/prefix.")],
    large_share: Annotated[Optional[float], typer.Option(help="Target share of prompts sent to the large model, 0..1.",
                                                         callback=_share)] = None,
    small_model: Annotated[Optional[str], typer.Option(help="Small causal LM: HF id or local folder (default: embedded tiny model, wiring only).")] = None,
    large_model: Annotated[Optional[str], typer.Option(help="Large causal LM: HF id or local folder (default: embedded tiny model, wiring only).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Tokens generated per response.")] = None,
    router: Annotated[Optional[str], typer.Option(help="Router from the registry: learned (default), probe, random.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Read at most N prompts.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Run id (default: UTC timestamp + random suffix).")] = None,
) -> None:
    """Answer every prompt with the small or the large model, as the router decides; write Parquet responses and a
    run summary (counts per route, realised large share, tokens/s per pool).

    Rerunning the same command resumes: prompts already answered are skipped.
    """
    settings, _ = load(config, {
        "llm.large_share": large_share, "llm.small_model": small_model, "llm.large_model": large_model,
        "llm.max_new_tokens": max_new_tokens, "llm.router": router, "llm.limit": limit, "ray.address": address,
    })
    quiet_libraries()
    from jobs.run_llm import run_and_report

    code = run_and_report(settings, prompts, out, run_id=run_id)
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
    from jobs.train_router import DEFAULT_DATA, DEFAULT_OUT, train

    try:
        report = train(data or str(DEFAULT_DATA), out or str(DEFAULT_OUT), seed=seed, cache_dir=cache)
    except (FileNotFoundError, ValueError) as e:
        exit_with_error(str(e))
    typer.echo(f"router written to {report['out']}: validation APGR {report['val']['learned']['apgr']}, "
               f"CPT(50%) {report['val']['learned']['cpt50']}, CPT(80%) {report['val']['learned']['cpt80']}")


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
