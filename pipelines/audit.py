"""Audit an output root: every id exactly once, ok rows have a readable image, no orphan or duplicate objects.

The invariant the reliability suite checks after faults, and a user can check with ``dynagen audit DEST``.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

from dynagen.storage import Storage


@dataclass
class AuditReport:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    duplicated: list[str] = field(default_factory=list)  # ids with more than one metadata row
    missing_images: list[str] = field(default_factory=list)  # ok rows whose image is absent or unreadable
    orphans: list[str] = field(default_factory=list)  # images with no ok row
    failed_without_reason: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # expected ids with no row at all

    @property
    def clean(self) -> bool:
        return not (self.duplicated or self.missing_images or self.orphans or self.failed_without_reason or self.lost)


def audit(storage: Storage, expected_ids: set[str] | None = None, open_images: bool = True) -> AuditReport:
    from PIL import Image

    from pipelines.sinks import read_metadata

    meta = read_metadata(storage, ["id", "status", "error"]).to_pylist()
    counts = Counter(m["id"] for m in meta)
    images = {k[len("images/") : -len(".png")] for k in storage.list("images") if k.endswith(".png")}
    r = AuditReport(rows=len(meta))
    ok_ids = set()
    for m in meta:
        if m["status"] == "ok":
            r.ok += 1
            ok_ids.add(m["id"])
            if m["id"] not in images:
                r.missing_images.append(m["id"])
            elif open_images:
                try:
                    Image.open(io.BytesIO(storage.get_bytes(f"images/{m['id']}.png"))).verify()
                except Exception:
                    r.missing_images.append(m["id"])
        else:
            r.failed += 1
            if not m["error"]:
                r.failed_without_reason.append(m["id"])
    r.duplicated = sorted(i for i, c in counts.items() if c > 1)
    r.orphans = sorted(images - ok_ids)
    if expected_ids is not None:
        r.lost = sorted(expected_ids - set(counts))
    return r
