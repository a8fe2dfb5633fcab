"""Entry for the nightly batch: called by ``dynagen nightly``, by ``dynagen submit nightly`` as a Ray Jobs
entrypoint, and by the Kubernetes schedules in infra/ (RayCronJob, CronJob → RayJob).

    python -m jobs.nightly --config examples/nightly.yaml [--date YYYY-MM-DD] [--settings-json '{...}']
    python -m jobs.nightly --spec-json '{...}' --date YYYY-MM-DD      # what 'dynagen submit nightly' sends

Exit codes: 0 every job ok, 1 a job failed (summary printed), 2 bad input (nothing was run).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date as Date

from pipelines.nightly import NightlySpec
from dynagen.core.settings import Settings


def run_and_report(spec: NightlySpec, night: Date, settings: Settings) -> int:
    """Run the night, print one line per job and the verdict; returns the exit code."""
    from pipelines.nightly import NightlyError, run_night

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        result = run_night(spec, night, settings, log=log)
    except NightlyError as e:
        log(f"error: {e}")
        return 2
    for line in result.lines():
        log(line)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    import json

    from pipelines.nightly import NightlyError, load_nightly, parse_date, parse_spec
    from dynagen.core.settings import SettingsError, settings_from_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="nightly YAML file")
    src.add_argument("--spec-json", help="the nightly spec as JSON (validated again here)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--settings-json", default="{}")
    a = p.parse_args(argv)
    try:
        spec = load_nightly(a.config) if a.config else parse_spec(json.loads(a.spec_json), "--spec-json")
        night = parse_date(a.date)
        settings = settings_from_json(a.settings_json)
    except (NightlyError, SettingsError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_and_report(spec, night, settings)


if __name__ == "__main__":
    sys.exit(main())
