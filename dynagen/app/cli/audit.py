"""``dynagen audit DEST``: check an output root against the pipeline's invariant."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load


def audit(
    dest: Annotated[str, typer.Argument(help="Output root: a folder or s3://bucket/prefix.")],
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (S3 settings).")] = None,
    open_images: Annotated[bool, typer.Option(help="Decode every image (slower, catches corrupt objects).")] = True,
    prompts: Annotated[Optional[str], typer.Option(
        "--prompts", help="The run's input (same forms as `run --prompts`): every input id must be in DEST exactly "
                          "once (ids DEST holds beyond it are listed).")] = None,
) -> None:
    """Every id exactly once in metadata; ok rows have a readable image; no orphan images. Exit 1 if not; exit 2 if
    DEST is missing or holds no dynagen output."""
    from dynagen.core.sources import ShardError, check_shard, input_ids, list_shards
    from dynagen.core.storage import Storage, StorageError
    from pipelines.audit import AuditError, check_destination
    from pipelines.audit import audit as run_audit

    settings, _ = load(config)
    store = Storage(dest, settings.storage)
    expected = None
    try:
        store.check()
        check_destination(store)
        if prompts is not None:
            src = Storage(prompts, settings.storage) if prompts.startswith("s3://") else None
            shards = list_shards(prompts, src)
            fs = src.filesystem() if src else None
            if fs is None:
                import pyarrow.fs as pafs

                fs = pafs.LocalFileSystem()
            for shard in shards:
                check_shard(shard, fs)
            expected = set(input_ids(shards, fs, settings.images.max_prompt_chars))
        r = run_audit(store, expected, open_images=open_images)
    except (StorageError, AuditError, ShardError) as e:
        exit_with_error(str(e))
    retry = f" ({len(r.retryable)} runtime errors a rerun retries)" if r.retryable else ""
    typer.echo(f"{r.rows} rows: {r.ok} ok, {r.failed} failed{retry}; duplicated ids {len(r.duplicated)}, "
               f"missing/unreadable images {len(r.missing_images)}, orphan images {len(r.orphans)}, "
               f"failed without reason {len(r.failed_without_reason)}")
    if expected is not None:
        hint = " (no row yet: a run that stopped, or was --limit-ed, before them; the same run command again " \
               "fills them)" if r.lost else ""
        typer.echo(f"input {len(expected)} ids: missing from DEST {len(r.lost)}{hint}, in DEST but not in the input "
                   f"{len(r.unexpected)}")
    labels = {"lost": "missing from DEST"}  # "lost" overstates it: an id a run never reached has no row either
    for name in ("duplicated", "missing_images", "orphans", "failed_without_reason", "lost", "unexpected"):
        if getattr(r, name):
            typer.echo(f"  {labels.get(name, name)}: {', '.join(getattr(r, name)[:10])}"
                       f"{' …' if len(getattr(r, name)) > 10 else ''}")
    raise typer.Exit(0 if r.clean else 1)  # ids beyond the input are listed, not failed: a DEST may serve many inputs
