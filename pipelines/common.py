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

# Inputs up to this size are read once on the driver before Ray starts, so a rerun with nothing new ends in seconds;
# bigger ones go straight to Ray (reading them twice would cost more than Ray's start).
NOTHING_NEW_MAX_BYTES = 64 * 2**20
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
            bad.append({"shard": shard.uri, "error": str(e)})
    if bad and not settings.images.skip_bad_shards:
        # Every bad shard named at once: fixing them one rerun at a time would be slow.
        what = "bad shard" if len(bad) == 1 else f"{len(bad)} bad shards"
        raise RunError(f"{what} (nothing generated; --skip-bad-shards to skip): " + "; ".join(b["error"] for b in bad))
    if not good:
        raise RunError(f"no usable prompt shards at {src}")
    return good, bad, fs


def nothing_new(shards, fs, max_prompt_chars: int, done: set[str], limit: int | None = None) -> dict[str, int] | None:
    """The ledger's counts (``new``, ``done``, ``duplicate``) when no input row needs work, else None.

    Read here on the driver, before Ray or any model starts: a rerun of a finished run then costs a read of its input
    and of the destination's metadata. None when the input is larger than ``NOTHING_NEW_MAX_BYTES``."""
    from actors.ledger import NEW, IdLedger
    from dynagen.core.sources import shard_rows

    if sum(fs.get_file_info(s.path).size or 0 for s in shards) > NOTHING_NEW_MAX_BYTES:
        return None
    ledger, read = IdLedger(done), 0
    for shard in shards:
        ids = [r["id"] for r in shard_rows(shard, fs, max_prompt_chars)]
        if limit is not None:
            ids = ids[: max(0, limit - read)]  # what Ray's limit keeps: the first rows in shard order
        read += len(ids)
        if NEW in ledger.claim(ids, shard.path):
            return None
    return ledger.stats()


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
