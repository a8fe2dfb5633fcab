"""Entry for the LLM job: called by ``dynagen run llm`` and, on a cluster, as a Ray Jobs entrypoint.

    python -m jobs.run_llm --settings-json '{...}' --prompts SRC --out DEST
"""

from __future__ import annotations

import sys

from dynagen.core.settings import Settings


def run_and_report(settings: Settings, src: str, dest: str, run_id: str | None = None, verbose: bool = False) -> int:
    """Run the pipeline, print a summary; returns the exit code (0 ok, 2 could not start)."""
    from rich.console import Console

    from dynagen.core.sources import ShardError
    from dynagen.core.storage import StorageError
    from jobs.common import print_failures
    from pipelines.common import RunError
    from pipelines.progress import make_view, quiet_ray, ray_log_dir
    from pipelines.llm import run, share_warning

    console = Console(stderr=True, soft_wrap=True)  # a log line keeps its paths whole, as run_images does
    try:
        quiet_ray(verbose)
        s = run(settings, src, dest, run_id=run_id, view=make_view(console, "prompts", "tokens"))
    except (RunError, ShardError, StorageError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    share = "n/a" if s.realised_large_share is None else f"{100 * s.realised_large_share:.1f}%"
    console.print(
        f"run {s.run_id}: [green]{s.ok} ok[/green], [red]{s.failed} failed[/red], {s.skipped} skipped (done earlier), "
        f"{s.duplicates} duplicate ids · {s.wall_s:.1f}s · routes small {s.routes.get('small', 0)} / large "
        f"{s.routes.get('large', 0)} · large share {share} (target {100 * s.target_large_share:.0f}%)",
        highlight=False,
    )
    for route, p in s.pools.items():
        console.print(f"  {route}: {p['model']} · {p['completion_tokens']} tokens · {p['tokens_per_s']:.1f} tokens/s"
                      f" · {p['truncated']} prompts truncated", highlight=False)
    if (warning := share_warning(s)) is not None:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    print_failures(console, s)
    console.print(f"summary: {dest.rstrip('/')}/runs/{s.run_id}.json  report: {dest.rstrip('/')}/runs/{s.run_id}.md  "
                  f"responses: {dest.rstrip('/')}/responses/", highlight=False)
    if not verbose and (logs := ray_log_dir()):
        console.print(f"Ray's own logs: {logs} (--verbose shows them here)", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from jobs.common import entry_main

    return entry_main(run_and_report, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
