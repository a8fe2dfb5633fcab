"""ETA bench: how far off is each estimator at 25 / 50 / 75 % of a run whose step mix is skewed?

The estimators (``dynagen/core/progress.py``, the code the progress bar uses):

* rows: rows left × mean seconds per finished row (the naive one);
* steps ("cost"): Σ planned steps of the rows left × measured seconds per planned step;
* fit: (a × rows left + b × planned steps left), a and b fitted by least squares to the finished batches' model
  times, scaled by wall time over model time — what the bar shows (a batch pays per image besides per step).

Two parts, both written to ``bench/results/eta.json``:

1. **Measured**: the real image pipeline (local Ray, the embedded tiny-sd, fixed per-row step counts through the
   input's ``steps`` column, so the mix is exactly ``STEP_MIX``) on ``N_REAL`` prompts, its progress board read by the
   CLI's own poller every 0.5 s. At 25/50/75 % of rows done, each estimator's ETA is compared with the time the run
   then actually took to finish (error = (ETA − actual) / actual). Two input orders: shuffled, and cheap prompts
   first (a shard of easy prompts ahead of a hard one).
2. **Simulated at scale**: ``N_SIM`` prompts run the way the diffusion actor runs them (windows of ``WINDOW`` rows,
   each cut into batches of one step count in first-seen order), each batch costing what part 1 measured (a
   least-squares fit of batch time = a + b·rows + c·rows·steps to part 1's batch latencies). It is a simulation:
   no Ray overhead, no queueing, no timing noise — it isolates the estimators' arithmetic on the step mix and the
   actor's grouping. Rows are "planned" (their steps known) once their window reaches the actor, as on the board.

    python -m bench.eta                 # ~4 min on 2 cores
    python -m bench.eta --smoke-test    # a tiny version of both parts, ~1.5 min
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from dynagen.core.progress import Snapshot, eta_cost, eta_fit, eta_rows

STEP_MIX = {8: 0.60, 20: 0.25, 60: 0.15}  # most prompts easy, a costly tail: ~15 % of rows, ~50 % of the steps
N_REAL = 160  # ~1 min of generation per order on 2 cores
N_SIM = 5000  # an overnight-sized run, simulated
WINDOW = 64  # the actor's group window in part 1 (small so a 160-row run has several windows); part 2 uses 256
SIM_WINDOW = 256  # images.group_window's default
BATCH = 8  # images.batch_size's default
FRACTIONS = (0.25, 0.5, 0.75)
ORDERS = ("shuffled", "cheap-first", "costly-first")
SEED = 0


def step_list(n: int, order: str, seed: int = SEED) -> list[int]:
    """``n`` step counts in STEP_MIX's proportions, in the given order."""
    steps: list[int] = []
    for k, share in STEP_MIX.items():
        steps += [k] * round(n * share)
    steps = (steps + [min(STEP_MIX)] * n)[:n]
    if order == "shuffled":
        random.Random(seed).shuffle(steps)
    elif order == "cheap-first":
        steps.sort()
    elif order == "costly-first":
        steps.sort(reverse=True)
    return steps


def errors_at_fractions(timeline: list[tuple[Snapshot, float]], total: int) -> dict[str, dict[str, float]]:
    """``timeline``: (snapshot, seconds the run then still took). Per fraction: both ETAs, the actual, the errors."""
    out = {}
    for f in FRACTIONS:
        snap, actual = next((s, a) for s, a in timeline if s.finished >= f * total)
        rows, cost, fit = eta_rows(snap), eta_cost(snap), eta_fit(snap)
        out[f"{round(100 * f)}%"] = {
            "actual_s": round(actual, 2), "eta_rows_s": round(rows, 2), "eta_cost_s": round(cost, 2),
            "eta_fit_s": round(fit, 2), "error_rows": round((rows - actual) / actual, 4),
            "error_cost": round((cost - actual) / actual, 4), "error_fit": round((fit - actual) / actual, 4),
        }
    return out


# 1. Measured -----------------------------------------------------------------------------------------------------


class Recorder:
    """A progress view that keeps every snapshot the poller hands it."""

    def __init__(self):
        self.snaps: list[Snapshot] = []

    def update(self, snap: Snapshot) -> None:
        self.snaps.append(snap)

    def close(self) -> None:
        pass


def measured_run(tmp: Path, n: int, order: str) -> tuple[dict, list[tuple[int, int, float]]]:
    """One real pipeline run; returns (errors per fraction, [(batch rows, steps, ms)] from its metadata)."""
    from dynagen.core.settings import load_settings
    from dynagen.core.storage import Storage
    from pipelines.images import run
    from pipelines.sinks import read_metadata

    base = [json.loads(line)["prompt"] for line in Path("examples/prompts.jsonl").read_text().splitlines() if line]
    src = tmp / f"in-{order}.jsonl"
    src.write_text("".join(json.dumps({"id": f"{order}-{i:05d}", "prompt": base[i % len(base)], "seed": i,
                                       "steps": s}) + "\n" for i, s in enumerate(step_list(n, order))))
    settings, _ = load_settings(None, {"images.steps": 20, "images.group_window": WINDOW, "images.batch_size": BATCH,
                                       "ray.num_cpus": 2}, env={})
    rec = Recorder()
    dest = tmp / f"out-{order}"
    run(settings, str(src), str(dest), view=rec)
    snaps = rec.snaps
    final = snaps[-1]
    assert final.done == n, f"{final.done} of {n} rows done"
    end = next(s.elapsed_s for s in snaps if s.done == final.done)  # first poll that saw the last row
    timeline = [(s, end - s.elapsed_s) for s in snaps if s.elapsed_s <= end]
    meta = read_metadata(Storage(str(dest)), ["batch_id", "batch_size", "steps", "latency_ms"]).to_pylist()
    batches = {m["batch_id"]: (m["batch_size"], m["steps"], m["latency_ms"]) for m in meta}
    return errors_at_fractions(timeline, n), list(batches.values())


def fit_batch_cost(batches: list[tuple[int, int, float]]) -> dict[str, float]:
    """Least squares: batch seconds = a + b·rows + c·rows·steps (non-negative terms clipped to 0)."""
    X = np.array([[1.0, r, r * s] for r, s, _ in batches])
    y = np.array([ms / 1000 for *_, ms in batches])
    coef = np.clip(np.linalg.lstsq(X, y, rcond=None)[0], 0, None)
    return {"a_s": float(coef[0]), "b_s_per_row": float(coef[1]), "c_s_per_row_step": float(coef[2])}


# 2. Simulated ----------------------------------------------------------------------------------------------------


def simulate(steps: list[int], cost: dict[str, float], window: int = SIM_WINDOW, batch: int = BATCH,
             plan_ahead: bool = True):
    """A run the way the diffusion actor does it; returns the timeline of (snapshot, seconds still to go).

    ``plan_ahead``: every row's steps are known from the start (the step stage streams far ahead of generation:
    in the demo StepSaver had all 48 rows before the diffusion actor started); else only rows whose window
    reached the actor (a worst case: a step stage held back by backpressure)."""
    from actors.diffusion import plan_batches

    total, t = len(steps), 0.0
    done = 0
    planned_rows = total if plan_ahead else 0
    planned_units = float(sum(steps)) if plan_ahead else 0.0
    done_planned = 0.0
    bs = [0.0] * 6
    snaps: list[tuple[Snapshot, float]] = []
    for w in range(0, total, window):
        win = steps[w : w + window]
        if not plan_ahead:
            planned_rows += len(win)
            planned_units += sum(win)
        for idx in plan_batches(win, batch):
            rows, k = len(idx), win[idx[0]]
            dt = cost["a_s"] + cost["b_s_per_row"] * rows + cost["c_s_per_row_step"] * rows * k
            t += dt
            done += rows
            done_planned += rows * k
            for j, v in enumerate((rows * rows, rows * rows * k, (rows * k) ** 2, rows * dt, rows * k * dt, dt)):
                bs[j] += v
            snaps.append(Snapshot(elapsed_s=t, total=total, done=done, planned_rows=planned_rows,
                                  planned_units=planned_units, done_planned_units=done_planned,
                                  done_units=done_planned, batch_sums=tuple(bs)))
    return [(s, t - s.elapsed_s) for s in snaps]


# 3. Main ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke-test", action="store_true", help="A tiny version of both parts.")
    p.add_argument("--out", default="bench/results/eta.json")
    a = p.parse_args(argv)
    n_real, n_sim = (48, 1000) if a.smoke_test else (N_REAL, N_SIM)

    from pipelines.progress import quiet_ray

    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # as the CLI does (actors inherit it)
    quiet_ray()  # the bench's own lines, not Ray's operator progress
    t0 = time.time()
    measured, batches = {}, []
    with tempfile.TemporaryDirectory(prefix="dynagen-eta-") as tmp:
        for order in ("shuffled", "cheap-first"):
            measured[order], b = measured_run(Path(tmp), n_real, order)
            batches += b
            print(f"measured {order}: {json.dumps(measured[order])}", file=sys.stderr)
    cost = fit_batch_cost(batches)
    simulated = {order: errors_at_fractions(simulate(step_list(n_sim, order), cost), n_sim) for order in ORDERS}
    window_only = {order: errors_at_fractions(simulate(step_list(n_sim, order), cost, plan_ahead=False), n_sim)
                   for order in ORDERS}
    result = {
        "what": "ETA error = (ETA - actual time left) / actual, at 25/50/75% of rows done; rows = rows left x mean "
                "s/row; cost = planned steps left x s/planned step; fit = (a x rows left + b x planned steps left) "
                "with a, b fitted to the finished batches' times, x wall/model time (dynagen/core/progress.py)",
        "step_mix": {str(k): v for k, v in STEP_MIX.items()},
        "measured": {"how": f"real image pipeline, embedded tiny-sd, {n_real} prompts, window {WINDOW}, batch {BATCH}, "
                            "2 CPUs, progress board polled every 0.5 s", "runs": measured},
        "batch_cost_fit": {**{k: round(v, 5) for k, v in cost.items()}, "from_batches": len(batches)},
        "simulated": {"how": f"{n_sim} prompts, window {SIM_WINDOW}, batch {BATCH}, each batch costing the fit above "
                             "(no Ray overhead, no noise); every row's steps known from the start (the step stage "
                             "runs ahead)", "runs": simulated},
        "simulated_window_only": {"how": "as simulated, but a row's steps are known only once its window reaches the "
                                         "diffusion actor (rows not yet planned priced at the mean planned so far)",
                                  "runs": window_only},
        "smoke_test": a.smoke_test,
        "wall_s": round(time.time() - t0, 1),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for part in ("measured", "simulated", "simulated_window_only"):
        for order, errs in result[part]["runs"].items():
            cells = "  ".join(f"{f}: rows {100 * e['error_rows']:+.0f}% steps {100 * e['error_cost']:+.0f}% "
                              f"fit {100 * e['error_fit']:+.0f}%" for f, e in errs.items())
            print(f"{part:21s} {order:12s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
