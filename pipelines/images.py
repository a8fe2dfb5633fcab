"""The batch image pipeline: prompt shards → StepSaver → step-grouped diffusion actors → storage.

``run(settings, src, dest)`` wires the stages; every stage's resources are set here, not in the actors.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timezone

from dynagen.core.errors import root_cause
from dynagen.core.records import RunSummary
from dynagen.core.settings import Settings
from dynagen.core.sources import ShardError, check_shard, list_shards, read_prompts
from dynagen.core.storage import Storage

LIGHT_CPU = 0.25  # read/normalize/write tasks and the StepSaver actor: small, so they never starve the diffusion actors


class RunError(RuntimeError):
    """The run could not start or finish; one line for the user."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def claim_rows(batch, ledger):
    """Drop rows an earlier run finished and repeated ids; keep everything else (failed rows included)."""
    import numpy as np
    import ray

    from actors.ledger import NEW

    ids = batch["id"].tolist()
    sources = "\x1f".join(sorted(set(batch["source"].tolist())))
    answers = ray.get(ledger.claim.remote(ids, sources))
    keep = np.asarray([a == NEW for a in answers], dtype=bool)
    return {k: v[keep] for k, v in batch.items()}


def _fixed_steps(batch, steps: int):
    import numpy as np

    batch["predicted_steps"] = np.zeros(len(batch["id"]), dtype=np.int64)
    override = batch["steps"].astype(np.int64)
    batch["steps"] = np.where(override > 0, override, steps)
    return batch


def check_inputs(settings: Settings, src: str):
    """(good shards, skipped shards with reasons, pyarrow fs); raises RunError unless --skip-bad-shards."""
    try:
        shards = list_shards(src, Storage(src, settings.storage) if src.startswith("s3://") else None)
    except ShardError as e:
        raise RunError(str(e)) from None
    fs = Storage(src, settings.storage).filesystem() if src.startswith("s3://") else None
    if fs is None:
        import pyarrow.fs as pafs

        fs = pafs.LocalFileSystem()
    good, bad = [], []
    for shard in shards:
        try:
            check_shard(shard, fs)
            good.append(shard)
        except ShardError as e:
            if not settings.images.skip_bad_shards:
                raise RunError(f"bad shard (nothing generated; --skip-bad-shards to skip it): {e}") from None
            bad.append({"shard": shard.uri, "error": str(e)})
    if not good:
        raise RunError(f"no usable prompt shards at {src}")
    return good, bad, fs


def run(settings: Settings, src: str, dest: str, run_id: str | None = None) -> RunSummary:
    """Generate images for every prompt in ``src`` into ``dest``; returns the run summary (also written to dest)."""
    import ray

    from actors import ledger as ledger_mod
    from actors.diffusion import DiffusionActor, check_model_dir
    from dynagen.core.raycluster import ensure_ray
    from pipelines.report import write_report
    from pipelines.sinks import ImageSink, done_ids

    s = settings.images
    run_id = run_id or new_run_id()

    # 1. Check everything that can fail fast, before generating anything.
    out = Storage(dest, settings.storage)
    try:
        out.check(create=True)
    except Exception as e:
        raise RunError(str(e)) from None
    try:
        check_model_dir(s.model)
    except Exception as e:
        raise RunError(str(e)) from None
    if s.steps == "auto":
        from pathlib import Path

        if not Path(s.stepsaver).is_dir():
            raise RunError(f"StepSaver model not found at {s.stepsaver}: pass --steps N or run 'dynagen train stepsaver'")
    shards, bad_shards, fs = check_inputs(settings, src)

    ensure_ray(settings.ray)
    summary = RunSummary(
        run_id=run_id, source=src, dest=out.root, bad_shards=bad_shards,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings=settings.model_dump(mode="json", exclude={"storage": {"access_key_id", "secret_access_key"}}),
    )

    # 2. Resume: ids already finished in dest are skipped; repeated ids are generated once.
    ledger = ledger_mod.make_actor(done_ids(out))

    # 3. Read and normalize rows (bad rows become failed rows, they are not dropped).
    ds = read_prompts(shards, fs, s.max_prompt_chars, num_cpus=LIGHT_CPU)
    if s.limit:
        ds = ds.limit(s.limit)
    ds = ds.map_batches(claim_rows, fn_kwargs={"ledger": ledger}, num_cpus=LIGHT_CPU)

    # 4. Steps per row: StepSaver's prediction (a per-row `steps` overrides it) or a fixed count.
    if s.steps == "auto":
        from actors.stepsaver import StepSaverActor

        ds = ds.map_batches(
            StepSaverActor, fn_constructor_kwargs={"path": s.stepsaver}, batch_size=256,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=LIGHT_CPU,
        )
    else:
        ds = ds.map_batches(_fixed_steps, fn_kwargs={"steps": int(s.steps)}, num_cpus=LIGHT_CPU)

    # 5. Generate: each actor call takes a window of rows and runs it in single-step-count batches. With early
    #    stopping a row's step count is its budget; converged images leave their batch sooner.
    ds = ds.map_batches(
        DiffusionActor,
        fn_constructor_kwargs=dict(
            model=s.model, scheduler=s.scheduler, guidance_scale=s.guidance_scale, batch_size=s.batch_size,
            num_threads=max(1, math.ceil(s.cpus_per_actor)), **s.early_stop_kwargs(),
        ),
        batch_size=s.group_window,
        compute=ray.data.ActorPoolStrategy(min_size=s.actors_min, max_size=max(s.actors_min, s.actors_max)),
        num_cpus=s.cpus_per_actor,
        num_gpus=s.gpus_per_actor or None,
    )

    # 6. Write: the sink records the run's start, then images and metadata, then the run summary.
    sink = ImageSink(out, summary, batch_size=s.batch_size, ledger=ledger)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_CPU})
    except Exception as e:  # a worker's traceback is long; the user needs the cause and what to do
        sink.fail(e)
        raise RunError(f"run {run_id} failed: {root_cause(e)}; finished work is kept, rerun the same command to resume") from e
    finally:
        ray.kill(ledger)

    # 7. Report: the human view, rendered from what the sink committed (a report never exists without its summary).
    write_report(out, sink.summary, sink.thumbs)
    return sink.summary
