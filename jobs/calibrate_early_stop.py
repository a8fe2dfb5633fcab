"""Calibrate the early-stop threshold: the largest one (fewest steps) whose quality stays ≥ fixed 50 steps.

Quality = mean SSIM (skimage, channel_axis=2, data_range=255, as in ``pipelines/calibrate.py``) to the 200-step image
of the same prompt and seed. Each (prompt, seed) runs once at the 50-step budget with stopping off, recording every
convergence check (rate and x̂0). A sample's outcome at threshold τ is fixed by its own checks (the first one after
``min_steps`` with rate < τ; samples never influence each other, a tested property), so every candidate τ is
replayed from that one run: its x̂0 decoded, scored, and its steps counted. The bench then measures the chosen τ
in real runs.

    python -m jobs.calibrate_early_stop                 # 32 prompts × 2 seeds, ~5-10 min on 2 shared cores
    python -m jobs.calibrate_early_stop --smoke-test    # 4 prompts × 1 seed

Prints the table and writes JSON; set the printed value as ``ImageSettings.early_stop_threshold``'s default (and
``actors.early_stop.DEFAULT_THRESHOLD``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPT_SEED = 999  # example_prompts seed the StepSaver calibration/training did not use
IMAGE_SEEDS = (1000, 1001)  # image seeds disjoint from the StepSaver calibration seeds (0, 1, 2)
# Rates (per unit of diffusion time) plateau near 0.6-0.8 late in a schedule on tiny-sd: the grid is dense there.
CANDIDATES = (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0)


def default_model() -> str:
    """The embedded model, relative to the repository (so outputs record no machine path)."""
    return "models/tiny-sd"


def main(argv: list[str] | None = None) -> int:
    import torch

    from skimage.metrics import structural_similarity

    from jobs.train_stepsaver import model_fingerprint

    from actors.diffusion import DiffusionCore, model_defaults
    from actors.early_stop import DEFAULT_INTERVAL, DEFAULT_MIN_STEPS, EarlyStopConfig, EarlyStopSampler, first_stop
    from dynagen.synth import example_prompts
    from dynagen.tinymodel import DEFAULT_GUIDANCE_SCALE
    from pipelines.calibrate import DEFAULT_REFERENCE_STEPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seeds", default=",".join(map(str, IMAGE_SEEDS)))
    ap.add_argument("--budget", type=int, default=50, help="the fixed step count whose quality must be kept")
    ap.add_argument("--reference-steps", type=int, default=DEFAULT_REFERENCE_STEPS)
    ap.add_argument("--interval", type=int, default=DEFAULT_INTERVAL)
    ap.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 threads on 2 shared cores ran far slower)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "early_stop_calibration.json"))
    ap.add_argument("--smoke-test", action="store_true")
    a = ap.parse_args(argv)
    n_prompts, seeds = (4, [int(a.seeds.split(",")[0])]) if a.smoke_test else (a.prompts, [int(s) for s in a.seeds.split(",")])
    t0 = time.perf_counter()

    # 1. Rows: prompts × seeds, and the model
    prompts = list(dict.fromkeys(example_prompts(n_prompts * 2, PROMPT_SEED)))[:n_prompts]
    rows = [(p, s) for p in prompts for s in seeds]
    guidance = float(model_defaults(a.model).get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
    core = DiffusionCore(a.model, "ddim", guidance_scale=guidance, batch_size=a.batch_size, num_threads=a.threads)
    sampler = EarlyStopSampler(core.pipe, EarlyStopConfig(threshold=0.0, interval=a.interval, min_steps=a.min_steps))
    batches = [rows[s : s + a.batch_size] for s in range(0, len(rows), a.batch_size)]

    # 2. References, and the budget run with stopping off, recording every check
    ref, final, checks, x0_images = [], [], [[] for _ in rows], {}
    for b, batch in enumerate(batches):
        bp, bs = [p for p, _ in batch], [s for _, s in batch]
        ref.append(core.generate(bp, bs, a.reference_steps))
        traces = []
        gens = [torch.Generator().manual_seed(s) for s in bs]
        out = sampler(bp, gens, a.budget, guidance, on_check=traces.append)
        final.append((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
        base = b * a.batch_size
        for tr in traces:  # decode every check's x̂0 once; replay picks among them
            imgs = (np.clip(sampler.decode(tr.x0), 0, 1) * 255).round().astype(np.uint8)
            for r, j in enumerate(tr.rows):
                checks[base + j].append((tr.step, float(tr.rate[r])))
                x0_images[(base + j, tr.step)] = imgs[r]
    ref, final = np.concatenate(ref), np.concatenate(final)

    # 3. Quality of every possible outcome, then the replay per candidate threshold
    def ssim(img, i):
        return float(structural_similarity(ref[i], img, channel_axis=2, data_range=255))

    final_q = [ssim(final[i], i) for i in range(len(rows))]
    fixed_q = float(np.mean(final_q))
    table = []
    for tau in CANDIDATES:
        q, steps = [], []
        for i in range(len(rows)):
            stop = first_stop(checks[i], tau, a.min_steps)
            q.append(final_q[i] if stop is None else ssim(x0_images[(i, stop)], i))
            steps.append(a.budget if stop is None else stop)
        table.append({"threshold": tau, "mean_ssim": round(float(np.mean(q)), 5), "mean_steps": round(float(np.mean(steps)), 2),
                      "stopped_share": round(float(np.mean([s < a.budget for s in steps])), 3),
                      "keeps_fixed_quality": bool(np.mean(q) >= fixed_q)})
    # Largest τ such that it and every smaller candidate keep the quality (a lucky isolated τ is not chosen).
    chosen = 0.0
    for row in table:
        if not row["keeps_fixed_quality"]:
            break
        chosen = row["threshold"]

    # 4. Report
    print(f"fixed {a.budget}: mean SSIM to {a.reference_steps}-step reference = {fixed_q:.4f} "
          f"({len(prompts)} prompts × {len(seeds)} seeds, interval {a.interval}, min_steps {a.min_steps})")
    print(f"{'threshold':>9} {'mean SSIM':>9} {'mean steps':>10} {'stopped':>7}  keeps")
    for row in table:
        print(f"{row['threshold']:>9} {row['mean_ssim']:>9.4f} {row['mean_steps']:>10.2f} {row['stopped_share']:>7.2f}  "
              f"{'yes' if row['keeps_fixed_quality'] else 'no'}")
    print(f"chosen threshold: {chosen}")
    result = {
        "model": Path(a.model).name, "model_unet_sha256": model_fingerprint(a.model), "guidance_scale": guidance, "prompt_seed": PROMPT_SEED, "image_seeds": seeds,
        "prompts": len(prompts), "budget": a.budget, "reference_steps": a.reference_steps, "interval": a.interval,
        "min_steps": a.min_steps, "fixed_budget_mean_ssim": round(fixed_q, 5), "table": table,
        "chosen_threshold": chosen, "wall_s": round(time.perf_counter() - t0, 1), "smoke_test": a.smoke_test,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
