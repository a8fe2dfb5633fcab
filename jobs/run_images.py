"""Entry for the image job: called by ``dynagen run images`` and, on a cluster, as a Ray Jobs entrypoint.

    python -m jobs.run_images --settings-json '{...}' --prompts SRC --out DEST
"""

from __future__ import annotations

import sys

from dynagen.core.settings import Settings


def run_and_report(settings: Settings, src: str, dest: str, run_id: str | None = None, verbose: bool = False) -> int:
    """Run the pipeline, print a summary; returns the exit code (0 ok, 1 run failed, 2 could not start)."""
    from rich.console import Console

    from dynagen.core.sources import ShardError
    from dynagen.core.storage import StorageError
    from jobs.common import print_failures
    from pipelines.common import RunError
    from pipelines.progress import make_view, quiet_ray, ray_log_dir
    from pipelines.images import run

    console = Console(stderr=True, soft_wrap=True)  # one line per message, even in narrow terminals
    try:
        quiet_ray(verbose)
        s = run(settings, src, dest, run_id=run_id, view=make_view(console, "images", None))
    except (RunError, ShardError, StorageError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    console.print(
        f"run {s.run_id}: [green]{s.ok} ok[/green], [red]{s.failed} failed[/red], {s.skipped} skipped (done earlier), "
        f"{s.duplicates} duplicate ids · {s.wall_s:.1f}s · {s.images_per_s:.2f} images/s · "
        f"{s.unet_evals} UNet evals · batch fill {100 * s.mean_batch_fill:.0f}%",
        highlight=False,
    )
    print_failures(console, s)
    console.print(f"summary: {dest.rstrip('/')}/runs/{s.run_id}.json  report: {dest.rstrip('/')}/runs/{s.run_id}.html",
                  highlight=False)
    if not verbose and (logs := ray_log_dir()):
        console.print(f"Ray's own logs: {logs} (--verbose shows them here)", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from jobs.common import entry_main

    return entry_main(run_and_report, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
