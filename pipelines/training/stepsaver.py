"""Train StepSaver's predictor: calibration rows (``pipelines/calibrate.py``) → an artifact ``actors/stepsaver.py`` loads.

The predictor (encoder, ordinal head, decoding) lives in the actor; what only training needs lives here: the ordinal
targets, the head fit, prompt-grouped folds, the choice of decoding risk for a target under-step rate, and the
held-out figures stored in the artifact's ``metrics``.

Entry points: :func:`train_predictor` (rows in memory) and :func:`train_from_calibration` (Parquet files, what
``dynagen train stepsaver`` / ``python -m jobs.train_stepsaver`` run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dynagen.core.records import file_fingerprint, model_fingerprint

from actors.encoder import EncoderConfig, PromptEncoder
from actors.stepsaver import HeadConfig, PredictorConfig, StepPredictor, build_head, decode_steps, head_probs, snap_to_grid

from pipelines.calibrate import min_steps_for, read_calibration, variance_split


# 1. Targets and figures ------------------------------------------------------------------------------------------


def exceed_targets(min_steps: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """(N, K-1) 0/1 matrix: ``min_steps[i] > grid[k]`` for the first K-1 grid values (the ordinal targets)."""
    y = np.asarray(min_steps, dtype=np.int64)[:, None]
    return (y > np.asarray(grid[:-1], dtype=np.int64)[None, :]).astype(np.float32)


def step_metrics(pred: Sequence[int], true: Sequence[int], grid: Sequence[int]) -> dict[str, float]:
    """Accuracy figures of predicted vs true min steps (both snapped to the grid)."""
    p, t = snap_to_grid(pred, grid), snap_to_grid(true, grid)
    g = list(grid)
    pi, ti = np.array([g.index(v) for v in p]), np.array([g.index(v) for v in t])
    return {
        "rows": int(len(p)),
        "under_step_rate": float(np.mean(p < t)),
        "exact": float(np.mean(p == t)),
        "within_one_bucket": float(np.mean(np.abs(pi - ti) <= 1)),
        "mean_pred_steps": float(p.mean()),
        "mean_true_steps": float(t.mean()),
        "steps_ratio": float(p.sum() / max(1, t.sum())),  # Σ predicted / Σ oracle ≈ UNet-eval ratio
    }


def choose_risk(p_exceed: np.ndarray, true: Sequence[int], grid: Sequence[int], target_under_rate: float) -> float:
    """The largest risk (fewest steps) whose under-step rate on these rows is ≤ ``target_under_rate``."""
    t = snap_to_grid(true, grid)
    best = 0.0
    for r in np.linspace(0.0, 0.95, 96):
        if np.mean(decode_steps(p_exceed, grid, r) < t) <= target_under_rate:
            best = float(r)
    return round(best, 4)


# 2. The head fit -------------------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    """Head training. Full-batch AdamW: a few hundred prompts fit in one batch and train in seconds."""

    epochs: int = 200
    lr: float = 3e-3
    weight_decay: float = 0.1
    # BCE weight on "needs more than g_k" targets (> 1: under-stepping costs more than over-stepping in the loss).
    # The decoding risk, chosen for a target under-step rate, already sets that bias; 2.0 gave no held-out gain.
    under_weight: float = 1.0
    seed: int = 0


def fit_head(emb: np.ndarray, min_steps: Sequence[int], grid: Sequence[int], head: HeadConfig, fit: FitConfig):
    """Train an ordinal head on (embedding, min_steps) rows; returns the torch module in eval mode."""
    import torch

    # A head this small gains nothing from threads, and spinning OpenMP threads on a busy machine made fits ~20× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_head(emb, min_steps, grid, head, fit)
    finally:
        torch.set_num_threads(threads)


def _fit_head(emb, min_steps, grid, head: HeadConfig, fit: FitConfig):
    import torch

    torch.manual_seed(fit.seed)
    x = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    y = torch.from_numpy(exceed_targets(min_steps, grid))
    model = build_head(x.shape[1], len(grid) - 1, head)
    opt = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((len(grid) - 1,), float(fit.under_weight)))
    model.train()
    for _ in range(fit.epochs):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return model.eval()


# 3. Folds and the whole fit --------------------------------------------------------------------------------------


def grouped_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of k folds that never split one group (prompt) across folds."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k)]


def train_predictor(
    prompts: Sequence[str],
    min_steps: Sequence[int],
    grid: Sequence[int],
    *,
    target_under_rate: float = 0.1,
    risk: float | None = None,
    folds: int = 5,
    encoder: EncoderConfig | None = None,
    head: HeadConfig | None = None,
    fit: FitConfig | None = None,
    prompt_encoder: PromptEncoder | None = None,
    calibration: dict[str, Any] | None = None,
    num_threads: int | None = None,
) -> tuple[StepPredictor, dict[str, Any]]:
    """Fit a StepPredictor on calibration rows (one per prompt×seed); returns it and held-out metrics.

    ``min_steps`` above the grid clip to its last value. The decoding risk is chosen on out-of-fold predictions
    (folds grouped by prompt) as the largest whose under-step rate ≤ ``target_under_rate``, unless ``risk`` is given.
    Metrics compare with the best constant prediction at the same under-step target.
    """
    # 1. Labels on the grid; prompts embedded once (frozen encoder)
    grid = [int(g) for g in grid]
    y = snap_to_grid(min_steps, grid)
    head, fit = head or HeadConfig(), fit or FitConfig()
    enc = prompt_encoder or PromptEncoder(encoder or EncoderConfig(), num_threads=num_threads)
    uniq = sorted(set(prompts))
    emb_u = enc.encode(uniq)
    pos = {p: i for i, p in enumerate(uniq)}
    emb = emb_u[[pos[p] for p in prompts]]

    # 2. Out-of-fold probabilities (grouped by prompt: a held-out prompt's seeds are all held out)
    oof = np.zeros((len(y), len(grid) - 1))
    k = max(2, min(folds, len(uniq)))
    for test_idx in grouped_folds(list(prompts), k, fit.seed):
        train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
        model = fit_head(emb[train_idx], y[train_idx], grid, head, fit)
        oof[test_idx] = head_probs(model, emb[test_idx])

    # 3. Risk for the under-step target, and the constant baseline at the same target
    chosen = choose_risk(oof, y, grid, target_under_rate) if risk is None else float(risk)
    oof_pred = decode_steps(oof, grid, chosen)
    const = next(g for g in grid if np.mean(g < y) <= target_under_rate) if len(y) else grid[-1]
    metrics: dict[str, Any] = {
        "rows": int(len(y)),
        "prompts": len(uniq),
        "folds": k,
        "target_under_rate": target_under_rate,
        "risk": chosen,
        "heldout": step_metrics(oof_pred, y, grid),
        "constant_baseline": {"steps": int(const), **step_metrics([const] * len(y), y, grid)},
        "label_histogram": {str(g): int(np.sum(y == g)) for g in grid},
    }

    # 4. Final head on all rows
    model = fit_head(emb, y, grid, head, fit)
    config = PredictorConfig(
        grid=grid, risk=chosen, encoder=enc.config, head=head,
        calibration=dict(calibration or {}), metrics={**metrics, "fit": asdict(fit)},
    )
    return StepPredictor(config, model, encoder=enc), metrics


# 4. From calibration files ---------------------------------------------------------------------------------------


def train_from_calibration(
    calibration: str | Sequence[str],
    out: str,
    threshold: float | None = None,
    target_under_rate: float = 0.1,
    risk: float | None = None,
    scheduler: str | None = None,
    precision: str = "fp32",
    max_tokens: int = 64,
    layers: int = 0,
    hidden: int = 0,
    epochs: int = 200,
    under_weight: float = 1.0,
    weight_decay: float = 0.1,
    folds: int = 5,
    num_threads: int | None = None,
    buckets: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train on calibration rows and save the artifact to ``out``; returns the held-out metrics.

    ``threshold`` re-labels min_steps from the stored SSIM curves (no regeneration); unset keeps the labels.
    ``buckets`` (a subset of the swept grid) are the predictor's step counts; labels round up to them. Default:
    the swept grid.
    """
    paths = [calibration] if isinstance(calibration, str) else list(calibration)
    rows = [r for r in read_calibration(paths).to_pylist() if r["status"] == "ok"]
    if scheduler:
        rows = [r for r in rows if r["scheduler"] == scheduler]
    if not rows:
        raise ValueError(f"no usable calibration rows in {', '.join(map(str, paths))}")
    # A predictor is for one model + scheduler + grid: mixing them would average incompatible labels.
    for key in ("scheduler", "model", "steps_swept", "reference_steps"):
        seen = {json.dumps(r[key]) for r in rows}
        if len(seen) > 1:
            raise ValueError(f"calibration rows mix several {key} values ({', '.join(sorted(seen))[:200]}); "
                             "train one predictor per model/scheduler (--scheduler filters)")
    grid = list(rows[0]["steps_swept"])
    thr = float(threshold) if threshold is not None else float(rows[0]["threshold"])
    if threshold is not None:
        check_relabel(rows, thr)
    labels = [
        min_steps_for(grid, r["quality_per_step"], thr, r["reference_steps"]) if threshold is not None else r["min_steps"]
        for r in rows
    ]
    if buckets:
        bad = sorted(set(buckets) - set(grid))
        if bad:
            raise ValueError(f"buckets {bad} were not swept (grid {grid})")
        grid = sorted(set(int(b) for b in buckets))
    prompts = [r["prompt"] for r in rows]
    provenance = {
        "files": [Path(p).name for p in paths], "sha256": [file_fingerprint(p) for p in paths],
        "model": rows[0]["model"], "model_unet_sha256": model_fingerprint(rows[0]["model"]),
        "scheduler": rows[0]["scheduler"], "guidance_scale": rows[0]["guidance_scale"],
        "reference_steps": rows[0]["reference_steps"], "threshold": thr, "rows": len(rows),
        "variance_split": variance_split(prompts, labels),
    }
    predictor, metrics = train_predictor(
        prompts, labels, grid, target_under_rate=target_under_rate, risk=risk, folds=folds,
        encoder=EncoderConfig(max_tokens=max_tokens, precision=precision, layers=layers), head=HeadConfig(hidden=hidden),
        fit=FitConfig(epochs=epochs, under_weight=under_weight, weight_decay=weight_decay), calibration=provenance,
        num_threads=num_threads,
    )
    predictor.save(out)
    return {"out": str(out), "variance_split": provenance["variance_split"], **metrics}


def check_relabel(rows: list[dict], threshold: float) -> None:
    """Raise if a row cannot be re-labelled at ``threshold``: its curve was early-stopped (NaN after its label) at a
    lower threshold, so whether a later count reaches ``threshold`` is unknown. Checked per row, so full curves (any
    threshold) and curves early-stopped at ≥ ``threshold`` can be mixed."""
    if any(threshold > r["threshold"] + 1e-9 and any(q != q for q in r["quality_per_step"]) for r in rows):
        raise ValueError(f"cannot re-label at {threshold}: some curves were early-stopped at a lower threshold")
