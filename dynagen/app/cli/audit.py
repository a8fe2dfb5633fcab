"""``dynagen audit DEST``: check an output root against the pipeline's invariant."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load


def audit(
    dest: Annotated[str, typer.Argument(help="Output root: a folder or s3://bucket/prefix.")],
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (S3 settings).")] = None,
    open_images: Annotated[bool, typer.Option(help="Decode every image (slower, catches corrupt objects).")] = True,
) -> None:
    """Every id exactly once in metadata; ok rows have a readable image; no orphan images. Exit 1 if not."""
    from dynagen.core.storage import Storage, StorageError
    from pipelines.audit import audit as run_audit

    settings, _ = load(config)
    store = Storage(dest, settings.storage)
    try:
        store.check()
        r = run_audit(store, open_images=open_images)
    except StorageError as e:
        exit_with_error(str(e))
    retry = f" ({len(r.retryable)} runtime errors a rerun retries)" if r.retryable else ""
    typer.echo(f"{r.rows} rows: {r.ok} ok, {r.failed} failed{retry}; duplicated ids {len(r.duplicated)}, "
               f"missing/unreadable images {len(r.missing_images)}, orphan images {len(r.orphans)}, "
               f"failed without reason {len(r.failed_without_reason)}")
    for name in ("duplicated", "missing_images", "orphans", "failed_without_reason"):
        if getattr(r, name):
            typer.echo(f"  {name}: {', '.join(getattr(r, name)[:10])}{' …' if len(getattr(r, name)) > 10 else ''}")
    raise typer.Exit(0 if r.clean else 1)
