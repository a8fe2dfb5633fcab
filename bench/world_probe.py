"""World probe: does the prompt decide the step need? Minimum steps per prompt class, under several criteria.

Sweeps every count of the StepSaver grid against a 100-step reference (same seed) for a few prompts of each class
of :func:`dynagen.world.synth.prompt_class` ("flat", "fine", "many", "vague") × a few seeds, in one process (no Ray),
then reads the stored curves under each quality criterion: full-resolution SSIM (the paper's) at several
thresholds and SSIM after 2×2 pooling. Per criterion: mean/median minimum steps per class and the prompt's share
of the min-step variance (``pipelines.calibrate.variance_split``). Also the mean SSIM per fixed count (is quality
monotone in steps?).

    python -m bench.world_probe                      # 6 prompts × 3 seeds per class, ~6 min on 2 cores
    python -m bench.world_probe --smoke-test         # 1 prompt × 1 seed per class
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("flat", "fine", "many", "vague")
REFERENCE_STEPS = 100
PROMPT_SEED = 70_001  # example_prompts seed: a stream the calibration (seed 0, 1, ...) does not draw from
CRITERIA = [("ssim", 0.98), ("ssim", 0.99), ("ssim", 0.995), ("ssim_lowres", 0.99), ("ssim_lowres", 0.995)]


def probe_prompts(per_class: int, seed: int = PROMPT_SEED) -> list[str]:
    from dynagen.world import synth

    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    for p in synth.example_prompts(20_000, seed):
        c = synth.prompt_class(p)
        if c in out and len(out[c]) < per_class and p not in out[c]:
            out[c].append(p)
        if all(len(v) == per_class for v in out.values()):
            break
    return [p for c in CLASSES for p in out[c]]


def table(records, criteria=CRITERIA) -> dict:
    """Per criterion: per-class mean/median min steps and the variance split, from records' stored curves."""
    from dynagen.world import synth
    from pipelines.calibrate import min_steps_for, variance_split

    out = {}
    for metric, thr in criteria:
        key = "quality_per_step" if metric == "ssim" else "ssim_lowres_per_step"
        labels = [min_steps_for(r.steps_swept, getattr(r, key), thr, r.reference_steps) for r in records]
        prompts = [r.prompt for r in records]
        per_class = {}
        for c in CLASSES:
            v = [m for m, p in zip(labels, prompts) if synth.prompt_class(p) == c]
            if v:
                per_class[c] = {"mean": round(float(np.mean(v)), 1), "median": float(np.median(v)), "rows": len(v)}
        vs = variance_split(prompts, labels)
        out[f"{metric}>={thr}"] = {"classes": per_class, "prompt_share": round(vs["prompt_share"], 3),
                                   "prompt_share_unbiased": round(vs["prompt_share_unbiased"], 3),
                                   "mean_steps": round(float(np.mean(labels)), 1)}
    curves = np.array([r.quality_per_step for r in records])
    out["mean_ssim_per_step"] = {str(g): round(float(q), 4) for g, q in zip(records[0].steps_swept, curves.mean(0))}
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/tiny-sd")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke-test", action="store_true")
    ap.add_argument("--out", default="out/bench/world_probe.json")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.per_class, a.seeds = 1, 1

    from pipelines.calibrate import DEFAULT_GRID, CalibrationCore, prompt_seed

    prompts = probe_prompts(a.per_class)
    rows = [(p, prompt_seed(p, k)) for p in prompts for k in range(a.seeds)]
    core = CalibrationCore(a.model, grid=DEFAULT_GRID, reference_steps=REFERENCE_STEPS, threshold=0.995, batch_size=48,
                           num_threads=a.threads)
    t0 = time.perf_counter()
    records = []
    for s in range(0, len(rows), 48):
        part = rows[s:s + 48]
        records += core.sweep([p for p, _ in part], [sd for _, sd in part])
        print(f"[probe] {len(records)}/{len(rows)} rows, {time.perf_counter() - t0:.0f}s", flush=True)
    records = [r for r in records if r.status == "ok"]
    result = {"model": Path(a.model).name, "prompts_per_class": a.per_class, "seeds": a.seeds, "rows": len(records),
              "wall_s": round(time.perf_counter() - t0, 1), "table": table(records),
              "prompts": prompts}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    t = result["table"]
    print(f"\n{'criterion':<20}" + "".join(f"{c:>14}" for c in CLASSES) + f"{'prompt share':>14}{'mean':>8}")
    for name, v in t.items():
        if name == "mean_ssim_per_step":
            continue
        cells = "".join(f"{v['classes'][c]['mean']:>8.1f} ({v['classes'][c]['median']:>3.0f})" if c in v["classes"]
                        else f"{'-':>14}" for c in CLASSES)
        print(f"{name:<20}{cells}{v['prompt_share']:>14.2f}{v['mean_steps']:>8.1f}")
    print("mean SSIM per fixed count: " + ", ".join(f"{g}: {q}" for g, q in t["mean_ssim_per_step"].items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
