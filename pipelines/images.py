"""The batch image pipeline: prompt shards → StepSaver → step-grouped diffusion actors → storage.

``run(settings, src, dest)`` wires the stages; every stage's resources are set here, not in the actors.
"""

from __future__ import annotations

import math

from dynagen.core.records import RunSummary, artifact_fingerprint, model_fingerprint
from dynagen.core.settings import Settings
from dynagen.core.sources import read_prompts
from dynagen.core.storage import Storage
from pipelines.common import (
    LIGHT_CPU, RunError, check_inputs, claim_rows, new_run_id, nothing_new, now_iso, settings_record, write,
)


def _fixed_steps(batch, steps: int, progress=None):
    import numpy as np

    batch["predicted_steps"] = np.zeros(len(batch["id"]), dtype=np.int64)
    override = batch["steps"].astype(np.int64)
    batch["steps"] = np.where(override > 0, override, steps)
    if progress is not None:
        from actors.progress import report_planned

        report_planned(progress, batch)
    return batch


def run(settings: Settings, src: str, dest: str, run_id: str | None = None, view=None) -> RunSummary:
    """Generate images for every prompt in ``src`` into ``dest``; returns the run summary (also written to dest).

    ``view`` (``pipelines.progress.BarView`` / ``LineView``) shows progress in images while the run goes."""
    import ray

    from actors import ledger as ledger_mod
    from actors.diffusion import DiffusionActor, check_model, resolve_model
    from dynagen.core.raycluster import ensure_ray
    from pipelines.report import write_report
    from pipelines.sinks import ImageSink, done_ids

    s = settings.images
    run_id = run_id or new_run_id()

    # 1. Check everything that can fail fast, before generating anything; a local DEST is created only once every
    #    check passed, so a run refused at start leaves nothing behind.
    out = Storage(dest, settings.storage)
    try:
        out.check()
    except Exception as e:
        raise RunError(str(e)) from None
    try:  # a folder, or a hub id in the local cache (the full check against its pipeline class comes before Ray)
        model_path = resolve_model(s.model)
    except Exception as e:
        raise RunError(str(e)) from None
    if s.steps == "auto":
        from pathlib import Path

        if not Path(s.stepsaver).is_dir():
            raise RunError(f"StepSaver model not found at {s.stepsaver}: pass --steps N or run 'dynagen train stepsaver'")
    shards, bad_shards, fs = check_inputs(settings, src)
    summary = RunSummary(run_id=run_id, source=src, dest=out.root, bad_shards=bad_shards, started_at=now_iso(),
                         settings=settings_record(settings), model_fingerprint=model_fingerprint(model_path),
                         stepsaver_fingerprint=artifact_fingerprint(s.stepsaver) if s.steps == "auto" else "")

    # 2. Resume: ids already finished in dest are skipped; repeated ids are generated once. Nothing new: the run
    #    is recorded and reported without starting Ray or a model. The progress board (only with a view) hears
    #    planned steps from the step stage and finished rows from the diffusion actors.
    done = done_ids(out)
    counts = nothing_new(shards, fs, s.max_prompt_chars, done, s.limit)
    if counts is not None:
        sink = ImageSink(out, summary, batch_size=s.batch_size)
        sink.on_write_start()
        summary.skipped, summary.duplicates = counts["done"], counts["duplicate"]
        write_report(out, sink.finish([]), sink.thumbs)
        from pipelines.progress import show_nothing_new

        show_nothing_new(view, shards, s.limit, counts)
        return sink.summary
    # The folder against its pipeline class's components, and what its family refuses (early stopping on FLUX, a
    # sampler it does not take): after the nothing-new exit, since asking diffusers costs the driver ~5-7 s of imports.
    try:
        check_model(s.model, s.scheduler, s.early_stop, s.adaptive, s.batching)
        out.check(create=True)
    except Exception as e:
        raise RunError(str(e)) from None
    ensure_ray(settings.ray)
    ledger = ledger_mod.make_actor(done)
    board = None
    if view is not None:
        from actors.progress import make_actor as make_board
        from pipelines.progress import total_rows

        board = make_board(total_rows(shards, s.limit))

    # 3. Read and normalize rows (bad rows become failed rows, they are not dropped).
    ds = read_prompts(shards, fs, s.max_prompt_chars, num_cpus=LIGHT_CPU)
    if s.limit:
        ds = ds.limit(s.limit)
    ds = ds.map_batches(claim_rows, fn_kwargs={"ledger": ledger}, num_cpus=LIGHT_CPU)

    # 4. Steps per row: StepSaver's prediction (a per-row `steps` overrides it) or a fixed count.
    if s.steps == "auto":
        from actors.stepsaver import StepSaverActor

        ds = ds.map_batches(
            StepSaverActor, fn_constructor_kwargs={"path": s.stepsaver, "progress": board}, batch_size=256,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=LIGHT_CPU,
        )
    else:
        ds = ds.map_batches(_fixed_steps, fn_kwargs={"steps": int(s.steps), "progress": board}, num_cpus=LIGHT_CPU)

    # 5. Generate: each actor call takes a window of rows and runs it in single-step-count batches. With early
    #    stopping a row's step count is its budget; converged images leave their batch sooner.
    ds = ds.map_batches(
        DiffusionActor,
        fn_constructor_kwargs=dict(
            progress=board, model=s.model, scheduler=s.scheduler, guidance_scale=s.guidance_scale, batch_size=s.batch_size,
            num_threads=max(1, math.ceil(s.cpus_per_actor)), **s.load_kwargs(), **s.early_stop_kwargs(),
        ),
        batch_size=s.group_window,
        compute=ray.data.ActorPoolStrategy(min_size=s.actors_min, max_size=max(s.actors_min, s.actors_max)),
        num_cpus=s.cpus_per_actor,
        num_gpus=s.gpus_per_actor or None,
    )

    # 6. Write: the sink records the run's start, then images and metadata, then the run summary.
    sink = ImageSink(out, summary, batch_size=s.batch_size, ledger=ledger)
    poller = None
    if board is not None:
        from pipelines.progress import Poller

        poller = Poller(board, ledger, view)
    try:
        write(ds, sink, run_id, ledger, poller)
    finally:
        if board is not None:
            ray.kill(board)

    # 7. Report: the human view, rendered from what the sink committed (a report never exists without its summary).
    write_report(out, sink.summary, sink.thumbs)
    return sink.summary
