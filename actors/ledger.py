"""Id ledger: decides, once per id and run, whether a row is new, already done (resume) or a duplicate.

``IdLedger`` is plain Python; ``IdLedgerActor`` is the single Ray actor every normalize task asks.
Claims are idempotent per batch fingerprint, so a retried task gets the same answers as its first attempt.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable

NEW, DONE, DUPLICATE = "new", "done", "duplicate"


class IdLedger:
    def __init__(self, done_ids: Iterable[str] = ()):
        self.done = set(done_ids)
        self.owner: dict[str, str] = {}  # id -> fingerprint of the batch that claimed it first
        self.counts: Counter[str] = Counter()
        self._answered: dict[str, list[str]] = {}

    def claim(self, ids: list[str], source: str = "") -> list[str]:
        """Per id: NEW (generate it), DONE (an earlier run has it) or DUPLICATE (an earlier row had it).

        ``source`` (the shard path) makes two identical files distinct batches while a retry stays the same.
        """
        fp = hashlib.sha256("\x1f".join([source, *ids]).encode()).hexdigest()
        if fp in self._answered:  # a retried task: same answers, counted once
            return self._answered[fp]
        out = []
        for i in ids:
            if i in self.done:
                out.append(DONE)
            elif i in self.owner:
                out.append(DUPLICATE)
            else:
                self.owner[i] = fp
                out.append(NEW)
        self._answered[fp] = out
        self.counts.update(out)
        return out

    def stats(self) -> dict[str, int]:
        return {k: self.counts.get(k, 0) for k in (NEW, DONE, DUPLICATE)}


def make_actor(done_ids: Iterable[str]):
    """Start the ledger as a Ray actor (max_concurrency 1: claims are serialized, so first-wins is exact)."""
    import ray

    return ray.remote(num_cpus=0)(IdLedger).remote(list(done_ids))
