"""Progress board: what the model actors have planned and finished, in the job's units, for the driver's progress
view (``pipelines/progress.py``).

``ProgressBoard`` is plain Python; ``make_actor`` starts it as the one small Ray actor the model actors report to
. Reports are keyed by row id, so a retried actor call counts its rows once.
"""

from __future__ import annotations

import time
from typing import Sequence


class ProgressBoard:
    def __init__(self, total: int | None = None, clock=time.time):
        self.total = total
        self._clock = clock
        self._t0: float | None = None  # first report: generation started (model loading is not work left)
        self._planned: dict[str, float] = {}
        self._done: set[str] = set()
        self.failed = 0
        self.planned_units = 0.0
        self.done_planned_units = 0.0
        self.done_units = 0.0
        self.batch_sums = [0.0] * 6  # Σr², Σru, Σu², Σrt, Σut, Σt over batches with a time (dynagen.core.progress)

    def start(self) -> None:
        """A model actor got its first rows: the clock starts (model loading is not work the ETA should price)."""
        if self._t0 is None:
            self._t0 = self._clock()

    def planned(self, ids: Sequence[str], units: Sequence[float]) -> None:
        """Rows with the work each is planned (steps once predicted; 1 per prompt; 0 for a failed row). The step
        stage reports them as soon as it predicts, usually far ahead of generation (text rows are small)."""
        for i, u in zip(ids, units):
            if i not in self._planned:
                self._planned[i] = float(u)
                self.planned_units += float(u)

    def done(self, ids: Sequence[str], ok: Sequence[bool], units: Sequence[float], seconds: float | None = None) -> None:
        """Rows finished (ok or failed), with the units actually run (steps taken, tokens generated); ``seconds``:
        the model time of this batch, if the rows were one batch. Rows that failed before reaching a model don't
        start the clock: the clock measures generation."""
        rows, planned = 0, 0.0
        for i, good, u in zip(ids, ok, units):
            if i in self._done:
                continue
            self._done.add(i)
            self.failed += not good
            self.done_units += float(u)
            p = self._planned.get(i, float(u))
            self.done_planned_units += p
            rows, planned = rows + 1, planned + p
        if seconds is not None and seconds > 0 and rows:
            r, u, t = float(rows), planned, float(seconds)
            for k, v in enumerate((r * r, r * u, u * u, r * t, u * t, t)):
                self.batch_sums[k] += v

    def snapshot(self) -> dict:
        """Counts so far and seconds since generation started (the board's own clock)."""
        return dict(
            total=self.total, done=len(self._done), failed=self.failed, planned_rows=len(self._planned),
            planned_units=self.planned_units, done_planned_units=self.done_planned_units,
            done_units=self.done_units, batch_sums=tuple(self.batch_sums) if self.batch_sums[5] > 0 else (),
            elapsed_s=0.0 if self._t0 is None else self._clock() - self._t0,
        )


def report(board, method: str, *args) -> None:
    """Send one report and wait for it (a millisecond beside a model batch), so the driver's last read after the
    write sees every row. Progress never fails a run: a lost or slow board is ignored."""
    import ray

    try:
        ray.get(getattr(board, method).remote(*args), timeout=10)
    except Exception:  # noqa: BLE001
        pass


def report_planned(board, batch) -> None:
    """The planned steps of a batch leaving the step stage (columns id, status, steps); failed rows plan 0."""
    ok = [str(st) == "ok" for st in batch["status"]]
    report(board, "planned", [str(i) for i in batch["id"]], [int(k) if good else 0 for k, good in zip(batch["steps"], ok)])


def make_actor(total: int | None):
    """Start the board as a Ray actor (no CPU reserved: it only adds numbers)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).remote(total)
