"""What the batch pipelines share (the image and LLM jobs; ``jobs/score_prompts.py`` uses the input check): the
run id, the one-line :class:`RunError`, the fail-fast input check, the resume claim and the write step."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone
from typing import Any

from dynagen.core.errors import root_cause
from dynagen.core.settings import Settings
from dynagen.core.sources import ShardError, check_shard, list_shards
from dynagen.core.storage import Storage

LIGHT_CPU = 0.25  # read/normalize/claim/write tasks and small actors: never starve the model actors of CPU


class RunError(RuntimeError):
    """The run could not start or finish; one line for the user."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings a run summary records: everything but the secrets."""
    from dynagen.core.settings import secret_exclude

    return settings.model_dump(mode="json", exclude=secret_exclude())


def check_inputs(settings: Settings, src: str):
    """(good shards with their row counts, skipped shards with reasons, pyarrow fs); raises RunError unless
    --skip-bad-shards."""
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
            good.append(dataclasses.replace(shard, rows=check_shard(shard, fs)))
        except ShardError as e:
            if not settings.images.skip_bad_shards:
                raise RunError(f"bad shard (nothing generated; --skip-bad-shards to skip it): {e}") from None
            bad.append({"shard": shard.uri, "error": str(e)})
    if not good:
        raise RunError(f"no usable prompt shards at {src}")
    return good, bad, fs


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


def write(ds, sink, run_id: str, ledger, poller=None) -> None:
    """Run the dataset into its sink (the sink records the run's start, rows and summary). On failure the sink
    records the stopped run with the readable cause and a one-line RunError is raised; the ledger actor always ends.
    ``poller`` (a ``pipelines.progress.Poller``) shows progress while the write runs."""
    import contextlib

    import ray

    try:
        with poller if poller is not None else contextlib.nullcontext():
            ds.write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_CPU})
    except Exception as e:  # a worker's traceback is long; the user needs the cause and what to do
        sink.fail(e)
        raise RunError(f"run {run_id} failed: {root_cause(e)}; finished work is kept, rerun the same command to resume") from e
    finally:
        ray.kill(ledger)
