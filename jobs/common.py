"""What the job entrypoints share: the argument contract with `dynagen submit` and the failure lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def entry_main(run_and_report: Callable[..., int], description: str | None, argv: list[str] | None) -> int:
    """``--settings-json '{...}' --prompts SRC --out DEST [--run-id ID] [--verbose]`` → ``run_and_report``; exit
    code 2 on bad settings."""
    from dynagen.core.settings import SettingsError, settings_from_json

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--settings-json", default="{}")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--run-id")
    p.add_argument("--verbose", action="store_true", help="Ray's own logs in the job's output too.")
    a = p.parse_args(argv)
    try:
        settings = settings_from_json(a.settings_json)  # validated again on the job's side
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_and_report(settings, a.prompts, a.out, a.run_id, verbose=a.verbose)


def print_failures(console: Any, summary: Any) -> None:
    """Per-reason failure counts and skipped shards, one line each."""
    if summary.failure_reasons:
        console.print("failures: " + "; ".join(f"{k} ×{v}" for k, v in summary.failure_reasons.items()), highlight=False)
    for b in summary.bad_shards:
        console.print(f"skipped shard {b['shard']}: {b['error']}", highlight=False)
