"""Progress arithmetic in the job's own units (images or prompts): pure, no Ray, no terminal.

A :class:`Snapshot` is what the run's progress board knows at one moment: rows in the input, rows finished,
failed and skipped, and per row the work it was planned (denoising steps for images, 1 per prompt for the LLM
job). :func:`eta_cost` turns it into a time left that knows the work left — Σ planned units of the rows not yet
done × measured seconds per unit — and :func:`eta_fit` refines it with a per-row cost fitted to the finished
batches; :func:`eta_rows` is the naive rows-left × mean-seconds-per-row they are compared with (``bench/eta.py``).
Rows the board has not seen planned yet (still being read or predicted) are counted at the mean planned so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """One moment of a run. ``units`` are denoising steps (image job) or completion tokens (LLM job)."""

    elapsed_s: float  # since the first row started generating (model loading excluded)
    total: int | None  # rows in the input (after --limit); None while unknown
    done: int = 0  # finished this run: ok + failed
    failed: int = 0
    skipped: int = 0  # done by an earlier run, or repeated ids
    planned_rows: int = 0  # rows whose planned units are known (done or not)
    planned_units: float = 0.0  # Σ planned units over those rows
    done_planned_units: float = 0.0  # Σ planned units over the finished rows
    done_units: float = 0.0  # Σ units actually run over the finished rows (steps taken, tokens generated)
    # Per finished batch r = rows, u = planned units, t = seconds; summed: (Σr², Σru, Σu², Σrt, Σut, Σt). Empty when
    # the actors report no batch times.
    batch_sums: tuple[float, ...] = ()

    @property
    def left(self) -> int | None:
        """Rows still to generate (None while the total is unknown)."""
        if self.total is None:
            return None
        return max(0, self.total - self.done - self.skipped)

    @property
    def finished(self) -> int:
        return self.done + self.skipped


def rate(done: float, elapsed_s: float) -> float:
    """Per-second rate, 0 before anything is measured."""
    return done / elapsed_s if elapsed_s > 0 and done > 0 else 0.0


def units_left(s: Snapshot) -> float | None:
    """Σ planned units of the rows not yet done; rows not yet planned count at the mean planned so far."""
    if s.left is None or s.planned_rows == 0:
        return None
    planned_left_rows = max(0, s.planned_rows - s.done)
    unplanned_rows = max(0, s.left - planned_left_rows)
    mean = s.planned_units / s.planned_rows
    return max(0.0, s.planned_units - s.done_planned_units) + unplanned_rows * mean


def eta_rows(s: Snapshot) -> float | None:
    """Naive ETA: rows left × the mean seconds per finished row. None until a row is done."""
    if s.left == 0:
        return 0.0
    if s.left is None or s.done == 0 or s.elapsed_s <= 0:
        return None
    return s.left * s.elapsed_s / s.done


def eta_cost(s: Snapshot) -> float | None:
    """Cost-aware ETA: Σ planned units left × measured seconds per planned unit. None until a row is done.

    Seconds per unit is measured on planned units (what the work left is counted in), so a run whose images stop
    before their budget (early stopping, adaptive caps) is priced consistently. Falls back to :func:`eta_rows`
    when no plan is known (e.g. every row failed on input)."""
    left = units_left(s)
    if s.left == 0:
        return 0.0
    if left is None or s.done_planned_units <= 0 or s.elapsed_s <= 0:
        return eta_rows(s)
    return left * s.elapsed_s / s.done_planned_units


def batch_cost(s: Snapshot) -> tuple[float, float] | None:
    """Seconds per row and per planned unit, least squares over the finished batches (t ≈ a·rows + b·units): a
    batch pays per image (text encoding, VAE decode, PNG) besides per step, so pricing steps alone overcharges
    costly rows when cheap ones came first. A negative term → the other term alone. None without batch times, or
    while the split is not identifiable (every batch so far had the same steps per row)."""
    if len(s.batch_sums) != 6 or s.batch_sums[5] <= 0:
        return None
    rr, ru, uu, rt, ut, _ = s.batch_sums
    det = rr * uu - ru * ru
    if det <= 1e-6 * rr * uu:
        return None
    a, b = (rt * uu - ut * ru) / det, (ut * rr - rt * ru) / det
    if a >= 0 and b >= 0:
        return a, b
    return (0.0, ut / uu) if a < 0 else (rt / rr, 0.0)


def eta_fit(s: Snapshot) -> float | None:
    """ETA from :func:`batch_cost`: (a·rows left + b·planned units left) in model time, scaled by wall time over
    model time so far (gaps, writes, several actors in parallel). While the split is not identifiable (one step
    count so far) the truth lies between pricing rows alone and steps alone: their geometric mean. Without batch
    times, :func:`eta_cost`."""
    if s.left == 0:
        return 0.0
    fit, left, units = batch_cost(s), s.left, units_left(s)
    if fit is None and len(s.batch_sums) == 6:
        rows, steps = eta_rows(s), eta_cost(s)
        return math.sqrt(rows * steps) if rows is not None and steps is not None else steps
    if fit is None or left is None or units is None or s.elapsed_s <= 0:
        return eta_cost(s)
    a, b = fit
    return (a * left + b * units) * s.elapsed_s / s.batch_sums[5]


def eta(s: Snapshot) -> float | None:
    """The ETA a person sees: the batch-cost fit when batch times are known, else steps left × s/step, else rows."""
    return eta_fit(s)


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def progress_details(s: Snapshot, noun: str = "images", unit_name: str | None = None) -> list[str]:
    """Everything but the count, e.g. ``["2 failed", "10 skipped", "1.90 images/s", "ETA 3m05s"]``;
    ``unit_name`` adds a units rate (``tokens`` → ``"310 tokens/s"``)."""
    if s.elapsed_s <= 0 and s.done == 0 and s.left != 0:  # no model started yet: rates and ETA would be noise
        return [f"{s.skipped} skipped", "starting (loading models)"]
    parts = [f"{s.failed} failed", f"{s.skipped} skipped", f"{rate(s.done, s.elapsed_s):.2f} {noun}/s"]
    if unit_name:
        parts.append(f"{rate(s.done_units, s.elapsed_s):.0f} {unit_name}/s")
    parts.append(f"ETA {format_duration(eta(s))}")
    return parts


def progress_line(s: Snapshot, noun: str = "images", unit_name: str | None = None) -> str:
    """The plain (non-TTY) progress line: ``images 120/480 · 2 failed · 10 skipped · 1.90 images/s · ETA 3m05s``
    (finished = done this run + skipped)."""
    total = "?" if s.total is None else str(s.total)
    return " · ".join([f"{noun} {s.finished}/{total}", *progress_details(s, noun, unit_name)])
