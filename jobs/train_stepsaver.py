"""Entry for StepSaver training: calibration Parquet(s) → predictor artifact folder.

    python -m jobs.train_stepsaver --calibration models/stepsaver/calibration.parquet --out models/stepsaver
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def _sha256(path: Path) -> str:
    if path.is_dir():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_fingerprint(model: str) -> str:
    """sha256 prefix of the model's UNet weights ('' if not readable here): tells a stale predictor apart."""
    files = sorted(Path(model).glob("unet/*.safetensors")) if Path(model).is_dir() else []
    return _sha256(files[0]) if files else ""


def run(
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
    from actors.encoder import EncoderConfig
    from actors.stepsaver import FitConfig, HeadConfig, train_predictor
    from pipelines.calibrate import min_steps_for, read_calibration, variance_split

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
        "files": [Path(p).name for p in paths], "sha256": [_sha256(Path(p)) for p in paths],
        "model": rows[0]["model"], "model_unet_sha256": model_fingerprint(rows[0]["model"]), "scheduler": rows[0]["scheduler"], "guidance_scale": rows[0]["guidance_scale"],
        "reference_steps": rows[0]["reference_steps"], "threshold": thr, "rows": len(rows),
        "variance_split": variance_split(prompts, labels),
    }
    predictor, metrics = train_predictor(
        prompts, labels, grid, target_under_rate=target_under_rate, risk=risk, folds=folds,
        encoder=EncoderConfig(max_tokens=max_tokens, precision=precision, layers=layers), head=HeadConfig(hidden=hidden),
        fit=FitConfig(epochs=epochs, under_weight=under_weight, weight_decay=weight_decay), calibration=provenance, num_threads=num_threads,
    )
    predictor.save(out)
    return {"out": str(out), "variance_split": provenance["variance_split"], **metrics}


def check_relabel(rows: list[dict], threshold: float) -> None:
    """Raise if a row cannot be re-labelled at ``threshold``: its curve was early-stopped (NaN after its label) at a
    lower threshold, so whether a later count reaches ``threshold`` is unknown. Checked per row, so full curves (any
    threshold) and curves early-stopped at ≥ ``threshold`` can be mixed."""
    if any(threshold > r["threshold"] + 1e-9 and any(q != q for q in r["quality_per_step"]) for r in rows):
        raise ValueError(f"cannot re-label at {threshold}: some curves were early-stopped at a lower threshold")


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibration", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float)
    p.add_argument("--target-under-rate", type=float, default=0.1)
    p.add_argument("--risk", type=float)
    p.add_argument("--scheduler")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "bf16"])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=0, help="encoder transformer layers used (0 = all 6)")
    p.add_argument("--hidden", type=int, default=0, help="head hidden units (0 = linear)")
    p.add_argument("--buckets", type=lambda t: [int(x) for x in t.split(",") if x.strip()],
                   help="predictor step counts, a subset of the swept grid (default: all)")
    a = p.parse_args(argv)
    m = run(a.calibration, a.out, a.threshold, a.target_under_rate, a.risk, a.scheduler, a.precision, a.max_tokens,
            a.layers, a.hidden, buckets=a.buckets)
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
