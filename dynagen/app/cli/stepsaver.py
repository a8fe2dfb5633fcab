"""StepSaver commands: ``dynagen calibrate``, ``dynagen train stepsaver``, ``dynagen steps``.

Plain functions; the app registers them. Heavy imports (torch, ray, transformers) stay inside, so ``--help`` is instant.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, List, Optional

import typer

from dynagen.app.cli.common import SchedulerName, exit_with_error, load, quiet_libraries


class Precision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"
    bf16 = "bf16"


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        exit_with_error(f"--{what} must be comma-separated integers, got {text!r}")
    if not values:
        exit_with_error(f"--{what} is empty")
    return values


def calibrate(
    prompts: Annotated[str, typer.Option("--prompts", "-p", help="Prompts: a .txt (one per line), .json/.jsonl "
                                         "(strings or {\"text\"|\"prompt\"}), .parquet/.csv (column 'prompt'), "
                                         "or synth:N[:SEED] for N captions of the synthetic world.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output: a .parquet file, or a folder (Ray writes one file "
                                     "per block). A *.summary.json is written beside it.")],
    model: Annotated[Optional[str], typer.Option(help="diffusers pipeline folder (default: settings images.model).")] = None,
    scheduler: Annotated[Optional[SchedulerName], typer.Option(help="Sampler to calibrate (labels are per scheduler).")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds per prompt, comma-separated (seed spread → label quantile).")] = "0,1,2",
    grid: Annotated[str, typer.Option(help="Step counts to sweep, comma-separated (the predictor's buckets).")] =
        "4,6,8,10,12,15,20,25,30,40,50,75,100",
    reference_steps: Annotated[int, typer.Option(help="Reference step count (≥ the largest grid count).")] = 200,
    threshold: Annotated[float, typer.Option(help="SSIM to the reference that counts as converged.")] = 0.90,
    limit: Annotated[Optional[int], typer.Option(help="Use at most N prompts.")] = None,
    actors: Annotated[int, typer.Option(help="Calibration actors (Ray pool size).")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs reserved per actor (sets torch threads).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Rows per UNet batch at one step count.")] = 48,
    early_stop: Annotated[bool, typer.Option("--early-stop", help="Stop each row at its first count ≥ threshold "
                                             "(~2× cheaper; the curve above it is not recorded).")] = False,
    distinct_seeds: Annotated[bool, typer.Option("--distinct-seeds", help="Give every prompt its own seeds (--seeds "
                                                 "become offsets), so one slow seed does not bias every label.")] = False,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
) -> None:
    """Sweep step counts per prompt × seed and label each with the fewest steps whose image matches the reference."""
    settings, _ = load(config, {"images.model": model, "images.scheduler": scheduler.value if scheduler else None,
                                "ray.address": address})
    seed_list, grid_list = _ints(seeds, "seeds"), _ints(grid, "grid")
    quiet_libraries()
    from jobs.calibrate import run
    from pipelines.calibrate import CalibrationError

    try:
        s = run(settings.images.model, prompts, out, settings.images.scheduler, seed_list, grid_list, reference_steps,
                threshold, limit, actors, cpus_per_actor, batch_size=batch_size, early_stop=early_stop,
                distinct_seeds=distinct_seeds, address=settings.ray.address, num_cpus=settings.ray.num_cpus)
    except (CalibrationError, FileNotFoundError, ValueError) as e:
        exit_with_error(str(e))
    except Exception as e:  # model load errors etc.: one line, not a traceback
        exit_with_error(f"{type(e).__name__}: {e}", code=1)
    typer.echo(f"{s['ok']} rows ok, {s['failed']} failed · {s['prompts']} prompts × {len(s['seeds'])} seeds · "
               f"{s['wall_s']:.0f}s ({s['seconds_per_row']:.2f}s/row) → {s['out']}")
    typer.echo("min_steps histogram: " + ", ".join(f"{k}:{v}" for k, v in s["min_steps_histogram"].items()))
    vs = s["variance_split"]
    typer.echo(f"variance of min_steps: {100 * vs['prompt_share']:.0f}% between prompts, "
               f"{100 * vs['seed_share']:.0f}% between seeds of one prompt (one-way); the prompt's share corrected "
               f"for few seeds per prompt: {100 * vs['prompt_share_unbiased']:.0f}%")
    if s["failed"]:
        raise typer.Exit(1)


def train_stepsaver(
    calibration: Annotated[List[str], typer.Argument(help="Calibration Parquet file(s) or folder(s) from `dynagen calibrate`.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Artifact folder (default: settings images.stepsaver).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Re-label at this SSIM threshold from the stored curves "
                                                       "(default: the calibration's).")] = None,
    target_under_rate: Annotated[float, typer.Option(help="Accepted share of prompt×seed rows predicted below their "
                                                     "true min steps (held-out); sets the decoding risk.")] = 0.1,
    precision: Annotated[Precision, typer.Option(help="Encoder precision: fp32, bf16 (autocast; fast on "
                                          "CPUs with AVX512-BF16/AMX) or int8 (dynamic quantization).")] = Precision.fp32,
    max_tokens: Annotated[int, typer.Option(help="Encoder window; longer prompts are truncated.")] = 64,
    layers: Annotated[int, typer.Option(help="Encoder transformer layers used (0 = all 6; fewer = faster).")] = 0,
    hidden: Annotated[int, typer.Option(help="Head hidden units (0 = linear head).")] = 0,
    buckets: Annotated[Optional[str], typer.Option(help="Predictor step counts, comma-separated subset of the swept "
                                                   "grid (default: the whole grid); labels round up to them.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Train the StepSaver predictor (frozen MiniLM + ordinal head) on calibration labels."""
    settings, _ = load(config, {"images.stepsaver": out})
    bucket_list = _ints(buckets, "buckets") if buckets else None
    quiet_libraries()
    from pipelines.calibrate import CalibrationError
    from pipelines.training.stepsaver import train_from_calibration

    try:
        m = train_from_calibration(calibration, settings.images.stepsaver, threshold, target_under_rate, precision=precision.value,
                max_tokens=max_tokens, layers=layers, hidden=hidden, buckets=bucket_list)
    except (CalibrationError, ValueError) as e:
        exit_with_error(str(e))
    h, c = m["heldout"], m["constant_baseline"]
    typer.echo(f"saved {m['out']} · {m['prompts']} prompts, {m['rows']} rows · risk {m['risk']}")
    typer.echo(f"held-out: under-step {100 * h['under_step_rate']:.1f}%, mean steps {h['mean_pred_steps']:.1f} "
               f"(oracle {h['mean_true_steps']:.1f}); constant {c['steps']} steps: under-step "
               f"{100 * c['under_step_rate']:.1f}%, mean {c['mean_pred_steps']:.1f}")


def steps(
    prompts: Annotated[List[str], typer.Argument(help="One or more prompts (quote each).")],
    model: Annotated[Optional[str], typer.Option("--stepsaver", help="Predictor folder (default: settings images.stepsaver).")] = None,
    risk: Annotated[Optional[float], typer.Option(help="Accepted chance a seed needs more steps (default: the trained one); "
                                                  "lower = more steps.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Print the predicted step count for each prompt: one line per prompt, '<steps>\\t<prompt>'."""
    settings, _ = load(config, {"images.stepsaver": model})
    if risk is not None and not 0.0 <= risk <= 1.0:
        exit_with_error(f"--risk must be in [0, 1], got {risk}")
    quiet_libraries()
    from transformers.utils import logging as hf_logging

    from actors.stepsaver import ArtifactError, StepPredictor

    hf_logging.disable_progress_bar()  # stdout/stderr carry only the answer or the error

    try:
        predictor = StepPredictor.load(settings.images.stepsaver)
    except ArtifactError as e:
        exit_with_error(str(e))
    try:
        result = predictor.predict_steps(prompts, risk=risk)
    except ValueError as e:
        exit_with_error(str(e))
    for s, p in zip(result, prompts):
        typer.echo(f"{s}\t{p}")
