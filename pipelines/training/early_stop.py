"""Train per-sample early stopping's learned signal: record denoising trajectories, fit the signal, pick its level.

Quality = SSIM (``pipelines.calibrate.image_quality``) to the 100-step image of the same prompt and seed, the
criterion StepSaver's labels and the frontier bench use. Rows are (prompt, seed) pairs; prompts come from StepSaver's
calibration set, so the bench's held-out prompts stay unseen by both models. Each row runs once at every budget of
``--budgets`` with stopping off, recording every convergence check (rate, previous rate, timestep); every check's x̂0
is decoded and scored. A sample's outcome under any stop rule is fixed by its own checks (samples never influence
each other, a tested property), so each candidate rule is replayed from that one run.

1. **Fit** the learned signal (``actors.early_stop.LearnedSignal``, logistic) on the checks: label = the decoded x̂0
   already passes (SSIM ≥ ``--criterion``) against the label target (``--label``: ``final`` = the budget's own last
   image, i.e. "nothing left to gain from this budget"; ``ref`` = the 100-step image). Validated on held-out prompts
   (a prompt's rows never sit on both sides), then refitted on all rows.
2. **Level**: the most-stopping level whose replayed mean SSIM loss (vs running each budget out) is ≤ ``--max-loss``
   on the validation prompts; the same rule picks a threshold for the old rate rule, side by side.

Trajectories are written per batch under ``--work`` so ``--resume`` continues an interrupted run.

    python -m jobs.calibrate_early_stop                  # 240 rows × budgets 20/30/50/75, ~15 min on 2 cores
    python -m jobs.calibrate_early_stop --smoke-test     # 8 rows × budgets 8/12, a minute
    python -m jobs.calibrate_early_stop --fit-only       # refit from the trajectories already recorded

Writes ``models/early-stop/signal.json`` (the artifact the image job and the bench load), the trajectories
(``models/early-stop/trajectories.parquet``, so a refit needs no model runs) and a results JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.early_stop import LearnedSignal

MODEL = "models/tiny-sd"
OUT = "models/early-stop"
CAL_PROMPTS = "models/stepsaver/calibration.parquet"
REFERENCE_STEPS = 100  # the top of StepSaver's grid: the bench's and the labels' reference
BUDGETS = (20, 30, 50, 75)  # spans what StepSaver predicts at risk 0.02-0.5
IMAGE_SEED_BASE = 7_000  # disjoint from StepSaver calibration's and the bench's image seeds
RATE_CANDIDATES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0)
LEVEL_CANDIDATES = (0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


# 1. Pure helpers (tested) ----------------------------------------------------------------------------------------


def fit_signal(x: np.ndarray, y: np.ndarray, level: float = 0.5, l2: float = 1e-3, iters: int = 50,
               meta: dict | None = None) -> LearnedSignal:
    """Logistic regression by Newton's method (five inputs: no library needed), inputs standardised."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = l2 * len(x) * np.diag([1.0] * (z.shape[1] - 1) + [0.0])  # the bias is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LearnedSignal(tuple(w[:-1].tolist()), float(w[-1]), tuple(mean.tolist()), tuple(scale.tolist()),
                         float(level), dict(meta or {}))


def replay(traj: dict[str, np.ndarray], passes: np.ndarray, min_steps: int) -> dict[str, np.ndarray]:
    """Per (row, budget) run: the steps it stops at and its SSIM to the reference under a stop rule.

    ``traj`` holds one entry per check (columns run, step, budget, ssim_ref, final_ssim_ref); ``passes`` says per
    check whether the rule stops there (``actors.early_stop.first_pass``, the sampler's rule). A run that never stops
    ends on its budget's final image.
    """
    from actors.early_stop import first_pass

    runs = np.unique(traj["run"])
    steps, q = np.empty(len(runs)), np.empty(len(runs))
    order = np.lexsort((traj["step"], traj["run"]))
    run_s, step_s, pass_s = traj["run"][order], traj["step"][order], passes[order]
    bounds = zip(np.searchsorted(run_s, runs, side="left"), np.searchsorted(run_s, runs, side="right"))
    for k, (a, b) in enumerate(bounds):
        stop = first_pass(step_s[a:b], pass_s[a:b], min_steps)
        if stop is None:
            steps[k], q[k] = traj["budget"][order[a]], traj["final_ssim_ref"][order[a]]
        else:
            j = order[a + int(np.flatnonzero(step_s[a:b] == stop)[0])]
            steps[k], q[k] = stop, traj["ssim_ref"][j]
    return {"run": runs, "steps": steps, "ssim": q}


def choose(rows: list[dict], max_loss: float, key: str) -> float:
    """The most-stopping candidate (rows ordered from least to most stopping) whose loss and every earlier one's stays
    ≤ ``max_loss`` (a lucky isolated candidate is not chosen)."""
    chosen = rows[0][key]
    for r in rows:
        if r["ssim_loss"] > max_loss:
            break
        chosen = r[key]
    return chosen


def summarise(traj: dict, passes: np.ndarray, min_steps: int, mask_runs: np.ndarray | None = None) -> dict:
    """Mean steps, mean SSIM and its loss vs running every budget out, over the runs (optionally a subset)."""
    r = replay(traj, passes, min_steps)
    full = replay(traj, np.zeros_like(passes), min_steps)
    m = np.ones(len(r["run"]), bool) if mask_runs is None else np.isin(r["run"], mask_runs)
    return {"mean_steps": float(r["steps"][m].mean()), "budget_mean_steps": float(full["steps"][m].mean()),
            "mean_ssim": float(r["ssim"][m].mean()), "ssim_loss": float(full["ssim"][m].mean() - r["ssim"][m].mean()),
            "stopped_share": float(np.mean(r["steps"][m] < full["steps"][m]))}


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Rank AUC (ties half): how well the signal orders passing checks above failing ones."""
    from scipy.stats import rankdata

    pos, n1 = y.astype(bool), int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# 2. Recording trajectories ---------------------------------------------------------------------------------------


def pick_rows(n: int, cal_prompts: str, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` distinct world prompts of StepSaver's calibration set, each with its own image seed."""
    import pyarrow.parquet as pq

    prompts = sorted(set(pq.read_table(cal_prompts, columns=["prompt"]).column("prompt").to_pylist()))
    rng = np.random.default_rng(seed)
    take = rng.choice(len(prompts), size=min(n, len(prompts)), replace=False)
    return [(prompts[i], IMAGE_SEED_BASE + k) for k, i in enumerate(take)]


def record_checks(sampler, guidance: float, prompts, seeds, budgets, ref: np.ndarray, batch_size: int,
                  score_final: bool = False) -> dict[str, np.ndarray]:
    """Run row i at ``budgets[i]`` with stopping off (one-budget batches) and score every convergence check's decoded
    x̂0 against ``ref[i]``. Columns: row, step, budget, t, rate, rate_prev, ssim_ref; with ``score_final`` also
    ssim_final (x̂0 vs the budget's last image) and final_ssim_ref (that image vs ``ref``). The bench uses it too."""
    import torch

    from actors.diffusion import plan_batches
    from pipelines.calibrate import image_quality

    to_u8 = lambda x: (np.clip(x, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    names = ("row", "step", "budget", "t", "rate", "rate_prev", "ssim_ref") + (
        ("ssim_final", "final_ssim_ref") if score_final else ())
    cols = {k: [] for k in names}
    for batch in plan_batches([int(b) for b in budgets], batch_size):
        traces = []
        out = sampler([prompts[i] for i in batch], [torch.Generator().manual_seed(int(seeds[i])) for i in batch],
                      int(budgets[batch[0]]), guidance, on_check=traces.append)
        final = to_u8(out.images)
        final_q = [image_quality(final[j], ref[i])[0] for j, i in enumerate(batch)] if score_final else None
        for tr in traces:
            imgs = to_u8(sampler.decode(tr.x0))
            for r, j in enumerate(tr.rows):
                i = batch[j]
                row = {"row": i, "step": tr.step, "budget": tr.budget, "t": tr.t, "rate": float(tr.rate[r]),
                       "rate_prev": float(tr.rate_prev[r]), "ssim_ref": image_quality(imgs[r], ref[i])[0]}
                if score_final:
                    row.update(ssim_final=image_quality(imgs[r], final[j])[0], final_ssim_ref=final_q[j])
                for k in names:
                    cols[k].append(row[k])
    return {k: np.asarray(v) for k, v in cols.items()}


def record_batch(core, sampler, batch: list[tuple[str, int]], first_row: int, budgets, reference_steps: int):
    """Every check of every (row, budget) run of one batch, scored: a dict of columns (row numbered across batches)."""
    prompts, seeds = [p for p, _ in batch], [s for _, s in batch]
    ref = core.generate(prompts, seeds, reference_steps)
    parts = [record_checks(sampler, core.guidance_scale, prompts, seeds, [b] * len(batch), ref, len(batch),
                           score_final=True) for b in budgets]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    idx = cols["row"].astype(int)
    return {"row": idx + first_row, "prompt": [prompts[i] for i in idx], "seed": [seeds[i] for i in idx],
            **{k: v for k, v in cols.items() if k != "row"}}


def num_train_timesteps(model: str) -> int:
    """The model's scheduler training length, from its config (the learned signal's t is t / this)."""
    cfg = Path(model) / "scheduler" / "scheduler_config.json"
    return int(json.loads(cfg.read_text()).get("num_train_timesteps", 1000)) if cfg.is_file() else 1000


# 3. The calibration ----------------------------------------------------------------------------------------------


@dataclass
class SignalCalibration:
    """What :func:`calibrate` runs (``python -m jobs.calibrate_early_stop --help`` explains each)."""

    model: str = MODEL
    rows: int = 240
    budgets: tuple[int, ...] = BUDGETS
    criterion: float = 0.995
    label: str = "final"  # or "ref"
    max_loss: float = 0.001
    min_steps: int = 6
    interval: int = 2
    batch_size: int = 24
    threads: int = 2
    out: str = OUT
    work: str = "out/early_stop_calibration"
    results: str = "bench/results/early_stop_calibration.json"
    resume: bool = False
    fit_only: bool = False
    smoke_test: bool = False


def calibrate(a: SignalCalibration) -> dict:
    """Record (or, with ``fit_only``, reuse) the trajectories, fit the signal, choose its level, write the artifact
    and the results JSON; returns the results."""
    budgets = [int(b) for b in a.budgets]
    t0 = time.perf_counter()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.early_stop import SIGNAL_FEATURES, signal_features
    from dynagen.core.records import model_fingerprint

    out_dir, work = Path(a.out), Path(a.work)
    traj_file = out_dir / "trajectories.parquet"
    if not a.fit_only:
        import torch

        from actors.diffusion import DiffusionCore
        from actors.early_stop import EarlyStopConfig, EarlyStopSampler

        torch.set_num_threads(a.threads)
        rows = pick_rows(a.rows, CAL_PROMPTS)
        core = DiffusionCore(a.model, "ddim", batch_size=a.batch_size, num_threads=a.threads)
        sampler = EarlyStopSampler(core.pipe, EarlyStopConfig(threshold=0.0, interval=a.interval, min_steps=1))
        work.mkdir(parents=True, exist_ok=True)
        if not a.resume:
            for f in work.glob("part-*.parquet"):
                f.unlink()
        batches = [rows[s : s + a.batch_size] for s in range(0, len(rows), a.batch_size)]
        for b, batch in enumerate(batches):
            part = work / f"part-{b:04d}.parquet"
            if part.exists():
                continue
            tb = time.perf_counter()
            cols = record_batch(core, sampler, batch, b * a.batch_size, budgets, REFERENCE_STEPS)
            pq.write_table(pa.table(cols), part)
            print(f"[early-stop] batch {b + 1}/{len(batches)}: {len(batch)} rows in {time.perf_counter() - tb:.0f}s "
                  f"({time.perf_counter() - t0:.0f}s total)", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        table = pa.concat_tables([pq.read_table(f) for f in sorted(work.glob("part-*.parquet"))])
        pq.write_table(table, traj_file, compression="zstd")
    traj = {k: np.asarray(v) for k, v in pq.read_table(traj_file).to_pydict().items()}
    traj["run"] = traj["row"].astype(np.int64) * 1000 + traj["budget"].astype(np.int64)

    # Fit on 80% of the prompts, validate on the rest; then refit on every row for the artifact.
    x = signal_features(traj["step"], traj["budget"], traj["t"], traj["rate"], traj["rate_prev"],
                        num_train_timesteps(a.model))
    y = (traj["ssim_final" if a.label == "final" else "ssim_ref"] >= a.criterion).astype(float)
    usable = ~np.isnan(traj["rate"])  # the first check has no rate: the rules never stop there
    prompts = np.unique(traj["prompt"])
    rng = np.random.default_rng(1)
    val_prompts = set(rng.choice(prompts, size=max(1, len(prompts) // 5), replace=False).tolist())
    is_val = np.array([p in val_prompts for p in traj["prompt"]])
    val_runs = np.unique(traj["run"][is_val])
    fit = fit_signal(x[usable & ~is_val], y[usable & ~is_val])
    p_all = np.where(usable, fit.prob(np.nan_to_num(x)), 0.0)
    val_auc = auc(p_all[usable & is_val], y[usable & is_val])
    rate_auc = auc(-np.nan_to_num(traj["rate"], nan=np.inf)[usable & is_val], y[usable & is_val])

    levels = [{"level": L, **summarise(traj, p_all >= L, a.min_steps, val_runs)} for L in LEVEL_CANDIDATES]
    rates = [{"threshold": tau, **summarise(traj, np.nan_to_num(traj["rate"], nan=np.inf) < tau, a.min_steps, val_runs)}
             for tau in RATE_CANDIDATES]
    level = choose(levels, a.max_loss, "level")
    rate_tau = choose(rates, a.max_loss, "threshold")
    per_budget = {}
    for bud in budgets:
        runs_b = np.unique(traj["run"][is_val & (traj["budget"] == bud)])
        per_budget[str(bud)] = {"learned": summarise(traj, p_all >= level, a.min_steps, runs_b),
                                "rate": summarise(traj, np.nan_to_num(traj["rate"], nan=np.inf) < rate_tau, a.min_steps, runs_b)}

    meta = {"model": Path(a.model).name, "model_unet_sha256": model_fingerprint(a.model), "scheduler": "ddim",
            "criterion": a.criterion, "label": a.label, "reference_steps": REFERENCE_STEPS, "budgets": budgets,
            "min_steps": a.min_steps, "interval": a.interval, "rows": int(len(np.unique(traj["row"]))),
            "checks": int(usable.sum()), "validation_auc": round(val_auc, 4), "rate_only_validation_auc": round(rate_auc, 4),
            "max_loss": a.max_loss}
    final = fit_signal(x[usable], y[usable], level=level, meta=meta)
    final.save(out_dir)

    print(f"trajectories: {meta['rows']} rows × budgets {budgets}, {meta['checks']} checks; label = x̂0 SSIM ≥ "
          f"{a.criterion} to the {'budget’s last image' if a.label == 'final' else f'{REFERENCE_STEPS}-step image'}")
    print(f"validation ({len(val_prompts)} prompts unseen by the fit): AUC learned {val_auc:.3f} vs rate alone {rate_auc:.3f}")
    print(f"{'rule':<18}{'mean steps':>11}{'of budget':>10}{'mean SSIM':>11}{'loss':>9}{'stopped':>9}")
    for r in levels:
        print(f"{'learned ≥ ' + str(r['level']):<18}{r['mean_steps']:>11.1f}{r['budget_mean_steps']:>10.1f}"
              f"{r['mean_ssim']:>11.4f}{r['ssim_loss']:>9.4f}{r['stopped_share']:>9.2f}")
    for r in rates:
        print(f"{'rate < ' + str(r['threshold']):<18}{r['mean_steps']:>11.1f}{r['budget_mean_steps']:>10.1f}"
              f"{r['mean_ssim']:>11.4f}{r['ssim_loss']:>9.4f}{r['stopped_share']:>9.2f}")
    print(f"chosen (loss ≤ {a.max_loss}): learned level {level}, rate threshold {rate_tau}")
    result = {**meta, "chosen_level": level, "chosen_rate_threshold": rate_tau, "validation_prompts": len(val_prompts),
              "levels": levels, "rates": rates, "per_budget_validation": per_budget, "features": list(SIGNAL_FEATURES),
              "wall_s": round(time.perf_counter() - t0, 1), "smoke_test": a.smoke_test}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_dir / 'signal.json'}, {traj_file} and {a.results}")
    return result
