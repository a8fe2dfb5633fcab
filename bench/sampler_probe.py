"""Sampler probe: which sampler settings let the prompt, not the seed, decide the step need?

For each candidate sampler (scheduler × guidance scale), sweeps held-out prompts of the world's mix × 2 seeds over
the StepSaver grid against the same-seed, same-sampler 100-step image (one process, no Ray), then reports:

- the fixed-count curve (mean SSIM per count) and the share of *mode flips* (SSIM < 0.9: an object moved, appeared
  or vanished) per count;
- the prompt's share of the min-step variance (unbiased, ANOVA) at SSIM ≥ 0.995;
- the **cross-seed prompt oracle**: each prompt gets the fewest count at which its *other* seed reached a threshold,
  scored on this seed. That is what a perfect prompt-only predictor with one labelled seed could do, so it bounds
  StepSaver on that sampler; reported as UNet evaluations ÷ the fixed curve's at the same mean quality.

    python -m bench.sampler_probe                                   # 48 prompts × 2 seeds × 5 samplers, ~20 min
    python -m bench.sampler_probe --samplers ddim:4,dpm++:4 --prompts 40   # the committed results, ~7 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_SAMPLERS = "ddim:4,ddim:2,dpm++:4,dpm++:2,euler:4"
FLIP_SSIM = 0.9
THRESHOLDS = (0.98, 0.99, 0.995, 0.998)


def cross_seed_oracle(Q: np.ndarray, grid: list[int], thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Q: (prompts, 2 seeds, grid) quality. Each (prompt, seed) gets the other seed's fewest passing count;
    returns (steps, quality) per (prompt, seed)."""
    from bench.stepsaver import oracle_steps

    g = np.asarray(grid)
    steps = np.stack([oracle_steps(Q[:, 1], grid, thr), oracle_steps(Q[:, 0], grid, thr)], axis=1)
    k = np.searchsorted(g, steps)
    q = np.take_along_axis(Q, k[..., None], axis=2)[..., 0]
    return steps, q


def summarize(Q: np.ndarray, grid: list[int], prompts: list[str]) -> dict:
    from bench.stepsaver import interp_evals, oracle_steps
    from pipelines.calibrate import variance_split

    flat = Q.reshape(-1, len(grid))
    curve_q = flat.mean(0)
    curve_e = 2.0 * np.asarray(grid, dtype=float)
    out = {
        "mean_ssim": {str(n): round(float(q), 4) for n, q in zip(grid, curve_q)},
        "flip_share": {str(n): round(float((flat[:, i] < FLIP_SSIM).mean()), 3) for i, n in enumerate(grid)},
    }
    labels = oracle_steps(flat, grid, 0.995)
    vs = variance_split([p for p in prompts for _ in range(Q.shape[1])], labels.tolist())
    out["min_steps_0.995"] = {"mean": round(float(labels.mean()), 1), "median": float(np.median(labels)),
                              "prompt_share": round(vs["prompt_share"], 3),
                              "prompt_share_unbiased": round(vs["prompt_share_unbiased"], 3)}
    oracle = {}
    for thr in THRESHOLDS:
        steps, q = cross_seed_oracle(Q, grid, thr)
        e = 2.0 * float(steps.mean())
        fixed = interp_evals(curve_q, curve_e, float(q.mean()))
        oracle[str(thr)] = {"mean_steps": round(float(steps.mean()), 1), "mean_ssim": round(float(q.mean()), 4),
                            "vs_fixed": round(e / fixed, 3) if fixed == fixed else None}
        ps = oracle_steps(flat, grid, thr)
        fixed_s = interp_evals(curve_q, curve_e, float(flat[np.arange(len(flat)), np.searchsorted(grid, ps)].mean()))
        oracle[str(thr)]["sample_oracle_vs_fixed"] = round(2.0 * float(ps.mean()) / fixed_s, 3) if fixed_s == fixed_s else None
    out["cross_seed_prompt_oracle"] = oracle
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/tiny-sd")
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="scheduler:guidance, comma-separated")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/bench/sampler_probe.json")
    a = ap.parse_args(argv)

    from bench.stepsaver import heldout_prompts
    from pipelines.calibrate import DEFAULT_GRID, CalibrationCore, prompt_seed

    grid = list(DEFAULT_GRID)
    prompts, _ = heldout_prompts(a.prompts, exclude=set())
    seeds = [[prompt_seed(p, 1000 + k) for k in range(2)] for p in prompts]
    result = {"model": Path(a.model).name, "prompts": len(prompts), "seeds_per_prompt": 2, "grid": grid,
              "flip_ssim": FLIP_SSIM, "samplers": {}}
    for spec in a.samplers.split(","):
        sched, g = spec.split(":")
        core = CalibrationCore(a.model, scheduler=sched, guidance_scale=float(g), grid=grid, reference_steps=100,
                               batch_size=48, num_threads=a.threads)
        t0 = time.perf_counter()
        rows_p = [p for p in prompts for _ in range(2)]
        rows_s = [s for ss in seeds for s in ss]
        records = []
        for s in range(0, len(rows_p), 48):
            records += core.sweep(rows_p[s:s + 48], rows_s[s:s + 48])
        Q = np.array([r.quality_per_step for r in records], dtype=float).reshape(len(prompts), 2, len(grid))
        res = summarize(Q, grid, prompts)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        result["samplers"][spec] = res
        o = res["cross_seed_prompt_oracle"]
        print(f"[{spec}] {res['wall_s']}s  min-steps {res['min_steps_0.995']}  flips@20 {res['flip_share']['20']} "
              f"@30 {res['flip_share']['30']}\n   curve {res['mean_ssim']}\n   prompt-oracle "
              + "  ".join(f"{t}: {v['vs_fixed']} (sample {v['sample_oracle_vs_fixed']})" for t, v in o.items()),
              flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
