"""Reliability suite: a per-scenario record and a closing table (and JSON, if DYNAGEN_RELIABILITY_JSON is set)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

RESULTS: list[dict] = []


@pytest.fixture
def scenario():
    """Record a scenario's outcome for the closing table (printed by pytest_terminal_summary)."""
    row: dict = {}
    t0 = time.time()
    yield row
    if row:
        row.setdefault("wall_s", round(time.time() - t0, 1))
        RESULTS.append(row)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    cols = ["scenario", "prompts", "faults", "reruns", "lost", "duplicated", "orphans", "wall_s", "overhead"]
    clean = {r.get("baseline"): r["wall_s"] for r in RESULTS if r.get("faults") == "none"}
    for r in RESULTS:  # wall time over the clean run with the same destination kind (blank if it did not run)
        base = clean.get(r.get("baseline", ""))
        if base:
            r["overhead"] = f"{r['wall_s'] / base:.2f}x"
    tr = terminalreporter
    tr.section("reliability scenarios")
    tr.write_line("  ".join(f"{c:>10}" if i else f"{c:<34}" for i, c in enumerate(cols)))
    for r in RESULTS:
        tr.write_line("  ".join(f"{str(r.get(c, '')):>10}" if i else f"{str(r.get(c, '')):<34}" for i, c in enumerate(cols)))
    out = os.environ.get("DYNAGEN_RELIABILITY_JSON")
    if out:
        Path(out).write_text(json.dumps(RESULTS, indent=2))
