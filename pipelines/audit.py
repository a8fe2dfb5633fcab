"""Audit an output root: every id exactly once, ok rows have a readable image, no orphan or duplicate objects.

The invariant the reliability suite checks after faults, and a user can check with ``dynagen audit DEST``.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

from dynagen.core.storage import Storage


class AuditError(RuntimeError):
    """The destination cannot be audited (missing, or holds no dynagen output); one line."""


@dataclass
class AuditReport:
    rows: int = 0  # metadata rows (a retried id has one per attempt)
    ok: int = 0  # ids whose latest outcome is ok
    failed: int = 0  # ids that failed: bad input (final) or a runtime error no rerun has fixed yet
    retryable: list[str] = field(default_factory=list)  # of those, runtime errors: the next rerun retries them
    duplicated: list[str] = field(default_factory=list)  # ids with more than one final row (ok or input failure)
    missing_images: list[str] = field(default_factory=list)  # ok rows whose image is absent or unreadable
    orphans: list[str] = field(default_factory=list)  # images with no ok row
    failed_without_reason: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # expected ids with no row at all
    unexpected: list[str] = field(default_factory=list)  # ids with rows that the expected input does not hold

    @property
    def clean(self) -> bool:
        return not (self.duplicated or self.missing_images or self.orphans or self.failed_without_reason or self.lost)


def audit(storage: Storage, expected_ids: set[str] | None = None, open_images: bool = True) -> AuditReport:
    from PIL import Image

    from dynagen.core.records import ERROR, FINAL_STATUSES, OK, outcomes
    from pipelines.sinks import read_metadata

    meta = read_metadata(storage, ["id", "status", "error"]).to_pylist()
    best = outcomes([m["id"] for m in meta], [m["status"] for m in meta])
    finals = Counter(m["id"] for m in meta if m["status"] in FINAL_STATUSES)
    images = {k[len("images/") : -len(".png")] for k in storage.list("images") if k.endswith(".png")}
    r = AuditReport(rows=len(meta))
    ok_ids = {i for i, s in best.items() if s == OK}
    for i in sorted(ok_ids):
        if i not in images:
            r.missing_images.append(i)
        elif open_images:
            try:
                Image.open(io.BytesIO(storage.get_bytes(f"images/{i}.png"))).verify()
            except Exception:
                r.missing_images.append(i)
    r.ok, r.failed = len(ok_ids), len(best) - len(ok_ids)
    r.retryable = sorted(i for i, s in best.items() if s == ERROR)
    r.failed_without_reason = sorted({m["id"] for m in meta if m["status"] != OK and not m["error"]})
    r.duplicated = sorted(i for i, c in finals.items() if c > 1)
    r.orphans = sorted(images - ok_ids)
    if expected_ids is not None:
        r.lost = sorted(expected_ids - set(best))
        r.unexpected = sorted(set(best) - expected_ids)
    return r


def check_destination(storage: Storage) -> None:
    """Raise AuditError unless ``storage`` holds a run's output: a wrong path must not pass as a clean audit."""
    from pathlib import Path

    if not storage.s3 and not Path(storage.root).is_dir():
        raise AuditError(f"{storage.root} does not exist")
    if not any(storage.list(d) for d in ("metadata", "runs", "images")):
        raise AuditError(f"{storage.root} holds no dynagen output (no metadata/, runs/ or images/): wrong path?")
