"""StepSaver benchmark: throughput and quality of predicted step counts vs fixed counts and the oracle.

All runs happen in one process on the same machine, same held-out prompts, same seeds:

  (a) fixed 100 steps (also the quality reference)    (b) fixed 50
  (c) the fewest fixed steps reaching StepSaver's mean quality
  (d) StepSaver: predict, group rows by predicted steps, generate (time includes the predictor)
  (e) oracle: each prompt's true min steps (smallest grid count with SSIM ≥ threshold vs the 100-step reference)

Quality = SSIM to the 100-step image of the same prompt and seed. Fixed counts are swept upwards as full timed runs
until the mean quality reaches StepSaver's (that count is (c)); the oracle labels come from the same sweep (prompts
not yet converged continue alone). Also: predictor prompts/s, under-step rate, and the prompt-vs-seed
variance split of the calibration labels. Throughput: each timed row is re-run in interleaved rounds
(``--timing-rounds``) and its best wall time kept, so a slow spell of a shared host does not skew one row.
Prints a table and writes a JSON.

    python -m bench.stepsaver                 # full run (~10-20 min on 2 cores)
    python -m bench.stepsaver --smoke-test    # 4 prompts, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiny-sd"
STEPSAVER = REPO / "models" / "stepsaver"
N_PROMPTS = 64  # held-out prompts: enough for a stable mean SSIM, keeps the full sweep ~15 min on 2 cores
SMOKE_PROMPTS = 4
HELDOUT_PROMPT_SEED = 90_001  # example_prompts seed never used for training prompts
IMAGE_SEED_BASE = 50_000  # image seeds disjoint from the calibration seeds (0, 1, 2, ...)
REFERENCE_STEPS = 100  # the task's quality reference: "mean SSIM to the 100-step image"
BATCH_SIZE = 16  # rows per UNet batch; the image pipeline's default group window fills batches like this
NUM_THREADS = 2  # the machine's cores; one process, no Ray (Ray overhead would blur per-run timings)
SPEED_PROMPTS = 2_000  # predictor throughput: a batch big enough that model load and warm-up are amortised
SPEED_REPEATS = 3  # best of 3 (median also reported): other tenants of a shared machine add noise
TARGETS = {"vs_fixed100": 3.0, "vs_fixed50": 1.5, "evals_vs_oracle": 1.15, "predictor_prompts_per_s": 500}
DIFFUSIONDB = REPO.parent / "shared" / "data" / "prompts" / "diffusiondb-sample" / "refl_data.json"


def heldout_prompts(n: int, exclude: set[str]) -> list[str]:
    from dynagen.synth import example_prompts

    out: list[str] = []
    for p in example_prompts(n * 3, HELDOUT_PROMPT_SEED):
        if p not in exclude and p not in out:
            out.append(p)
        if len(out) == n:
            break
    return out


def training_prompts(stepsaver: Path) -> tuple[set[str], list[dict]]:
    """Prompts the predictor was trained on (to exclude) and the calibration rows (for the variance split)."""
    rows: list[dict] = []
    for f in sorted(stepsaver.glob("calibration*.parquet")):
        from pipelines.calibrate import read_calibration

        rows += [r for r in read_calibration(f).to_pylist() if r["status"] == "ok"]
    return {r["prompt"] for r in rows}, rows


class Runner:
    """Generates prompt lists at given per-row step counts in step-grouped batches; times and counts evals."""

    def __init__(self, core, batch_size: int):
        self.core, self.batch_size = core, batch_size

    def run(self, prompts: list[str], seeds: list[int], steps: list[int]) -> tuple[np.ndarray, dict]:
        from actors.diffusion import plan_batches

        images = np.zeros((len(prompts), self.core.height, self.core.width, 3), dtype=np.uint8)
        evals0, t0, c0 = self.core.counter.evals, time.perf_counter(), time.process_time()
        for batch in plan_batches(steps, self.batch_size):
            images[batch] = self.core.generate([prompts[i] for i in batch], [seeds[i] for i in batch], steps[batch[0]])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return images, {"wall_s": wall, "cpu_s": cpu, "unet_evals": self.core.counter.evals - evals0,
                        "images_per_s": len(prompts) / wall, "batches": len(plan_batches(steps, self.batch_size))}


def ssim_to(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from pipelines.calibrate import image_quality

    return np.array([image_quality(a, b)[0] for a, b in zip(images, ref)])


def predictor_speed(predictor, prompts: list[str], repeats: int = SPEED_REPEATS) -> dict:
    predictor.predict_steps(prompts[:64])  # warm-up (allocator, thread pool)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict_steps(prompts)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    return {"prompts": len(prompts), "seconds_best": dt, "seconds_all": [round(t, 3) for t in times],
            "prompts_per_s": len(prompts) / dt, "prompts_per_s_median": len(prompts) / float(np.median(times)),
            "ms_per_prompt": 1000 * dt / len(prompts)}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_PROMPTS} prompts, small speed sample")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--stepsaver", default=str(STEPSAVER))
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--threads", type=int, default=NUM_THREADS, help="torch threads (1 on a busy shared machine)")
    ap.add_argument("--timing-rounds", type=int, default=2, help="extra interleaved timed rounds (best wall kept)")
    ap.add_argument("--predictor-threads", type=int, default=2, help="torch threads for the predictor speed test")
    ap.add_argument("--out", default=str(REPO / "out" / "bench" / "stepsaver.json"))
    a = ap.parse_args(argv)

    import torch

    from actors.diffusion import DiffusionCore
    from actors.stepsaver import StepPredictor, step_metrics
    from pipelines.calibrate import min_steps_for, variance_split

    torch.set_num_threads(a.threads)
    n = a.prompts or (SMOKE_PROMPTS if a.smoke_test else N_PROMPTS)

    # 1. Predictor, held-out prompts (never in its calibration set), image seeds disjoint from calibration
    t0 = time.perf_counter()
    predictor = StepPredictor.load(a.stepsaver, num_threads=a.threads)
    load_s = time.perf_counter() - t0
    cal = predictor.config.calibration
    train_set, cal_rows = training_prompts(Path(a.stepsaver))
    prompts = heldout_prompts(n, train_set)
    seeds = [IMAGE_SEED_BASE + i for i in range(n)]
    grid = predictor.grid
    threshold = float(cal.get("threshold", 0.9))
    scheduler = cal.get("scheduler", "ddim")
    from jobs.train_stepsaver import model_fingerprint

    if cal.get("model_unet_sha256") and model_fingerprint(a.model) not in ("", cal["model_unet_sha256"]):
        print(f"WARNING: {a.model} is not the model the predictor was calibrated on (UNet hash differs)", file=sys.stderr)
    core = DiffusionCore(a.model, scheduler, batch_size=BATCH_SIZE, num_threads=a.threads)
    runner = Runner(core, BATCH_SIZE)
    core.generate(prompts[:2], seeds[:2], 2)  # warm-up: first-call allocations out of the timed runs

    # 2. Fixed 100 (the quality reference) and fixed 50
    ref, stats = runner.run(prompts, seeds, [REFERENCE_STEPS] * n)
    fixed = {REFERENCE_STEPS: {**stats, "ssim": np.ones(n)}}
    imgs, stats = runner.run(prompts, seeds, [50] * n)
    fixed[50] = {**stats, "ssim": ssim_to(imgs, ref)}

    # 3. StepSaver: predict (timed with the run), group by predicted steps, generate
    t0, c0 = time.perf_counter(), time.process_time()
    pred = predictor.predict_steps(prompts)
    pred_s, pred_cpu = time.perf_counter() - t0, time.process_time() - c0
    imgs, ss = runner.run(prompts, seeds, pred)
    ss.update(wall_s=ss["wall_s"] + pred_s, cpu_s=ss["cpu_s"] + pred_cpu, predictor_s=pred_s)
    ss["images_per_s"] = n / ss["wall_s"]
    ss["ssim"] = ssim_to(imgs, ref)
    target_q = float(ss["ssim"].mean())

    # 4. Ascending sweep over the grid: full timed runs until the mean quality reaches StepSaver's (that count is
    #    (c)); past it only prompts that have not converged yet run (untimed) to finish the oracle labels.
    counts = sorted({g for g in grid if g < REFERENCE_STEPS} | {50})
    curves = np.full((n, len(counts)), np.nan)
    best_fixed = None
    for k, g in enumerate(counts):
        todo = list(range(n)) if best_fixed is None else [
            i for i in range(n) if not np.any(curves[i, :k] >= threshold)]
        if not todo:
            break
        if g in fixed and len(todo) == n:
            q = fixed[g]["ssim"]
        else:
            imgs, stats = runner.run([prompts[i] for i in todo], [seeds[i] for i in todo], [g] * len(todo))
            q = ssim_to(imgs, ref[todo])
            if len(todo) == n:
                fixed[g] = {**stats, "ssim": q}
        curves[todo, k] = q
        if best_fixed is None and len(todo) == n and q.mean() >= target_q - 1e-9:
            best_fixed = g
    best_fixed = best_fixed or REFERENCE_STEPS
    oracle_steps = [min_steps_for(counts, curves[i], threshold, REFERENCE_STEPS) for i in range(n)]
    counts = counts + [REFERENCE_STEPS]

    # 5. Oracle
    imgs, orc = runner.run(prompts, seeds, oracle_steps)
    orc["ssim"] = ssim_to(imgs, ref)

    # 5b. Timing rounds: the host's speed drifts (a shared VM ran one pass 4× slower than the next), so every timed
    #     row is re-run in interleaved rounds and its best wall time kept; the first pass counts as a round.
    plans = {"fixed_100": [REFERENCE_STEPS] * n, "fixed_50": [50] * n, "fixed_best": [best_fixed] * n,
             "stepsaver": None, "oracle": oracle_steps}
    rows = {"fixed_100": fixed[REFERENCE_STEPS], "fixed_50": fixed[50], "fixed_best": fixed[best_fixed],
            "stepsaver": ss, "oracle": orc}
    for r in rows.values():
        r["wall_all"] = [round(r["wall_s"], 2)]
    for _ in range(a.timing_rounds):
        for name, steps in plans.items():
            t0 = time.perf_counter()
            if steps is None:  # StepSaver's time includes its prediction
                steps = predictor.predict_steps(prompts)
            _, st = runner.run(prompts, seeds, steps)
            r, wall = rows[name], time.perf_counter() - t0
            r["wall_all"].append(round(wall, 2))
            if wall < r["wall_s"]:
                r.update(wall_s=wall, cpu_s=st["cpu_s"], images_per_s=n / wall)

    # 6. Predictor speed (synthetic captions, and real DiffusionDB prompts if present) and the label variance split
    from dynagen.synth import example_prompts

    speed_n = 256 if a.smoke_test else SPEED_PROMPTS
    torch.set_num_threads(a.predictor_threads)  # the ≥ 500 prompts/s target is for 2 cores
    speed = {"synth": predictor_speed(predictor, example_prompts(speed_n, 4242))}
    if DIFFUSIONDB.is_file():
        real = [x["text"] for x in json.loads(DIFFUSIONDB.read_text())[-speed_n:] if isinstance(x.get("text"), str) and x["text"].strip()]
        speed["diffusiondb"] = predictor_speed(predictor, real)
    # Labels at the threshold the predictor was trained with (training may re-label the stored curves).
    cal_labels = [min_steps_for(r["steps_swept"], r["quality_per_step"], threshold, r["reference_steps"]) for r in cal_rows]
    vsplit = variance_split([r["prompt"] for r in cal_rows], cal_labels) if cal_rows else {}

    # 7. Report
    runs = {
        "fixed_100": fixed[REFERENCE_STEPS], "fixed_50": fixed[50], f"fixed_best_{best_fixed}": fixed[best_fixed],
        "stepsaver": ss, "oracle": orc,
    }
    table = {}
    for name, r in runs.items():
        table[name] = {
            "images_per_s": round(r["images_per_s"], 3), "wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2),
            "wall_s_all_rounds": r["wall_all"],
            "unet_evals": int(r["unet_evals"]), "mean_ssim": round(float(np.mean(r["ssim"])), 4),
            "min_ssim": round(float(np.min(r["ssim"])), 4),
            # StepSaver's own criterion: share of images within the calibration threshold of the reference
            "share_ge_threshold": round(float(np.mean(r["ssim"] >= threshold - 1e-9)), 4),
        }
    base100, base50 = table["fixed_100"], table["fixed_50"]
    s = table["stepsaver"]
    acc = step_metrics(pred, oracle_steps, counts)
    checks = {
        "throughput_vs_fixed100": round(s["images_per_s"] / base100["images_per_s"], 3),
        "throughput_vs_fixed50": round(s["images_per_s"] / base50["images_per_s"], 3),
        "evals_vs_fixed100": round(base100["unet_evals"] / s["unet_evals"], 3),
        "evals_vs_fixed50": round(base50["unet_evals"] / s["unet_evals"], 3),
        "quality_ge_fixed50": s["mean_ssim"] >= base50["mean_ssim"],
        "evals_vs_oracle": round(s["unet_evals"] / table["oracle"]["unet_evals"], 3),
        "evals_beat_best_fixed": s["unet_evals"] < table[f"fixed_best_{best_fixed}"]["unet_evals"],
        "predictor_prompts_per_s": round(speed["synth"]["prompts_per_s"], 1),
    }
    met = {
        "3x_fixed100": checks["throughput_vs_fixed100"] >= TARGETS["vs_fixed100"],
        "1.5x_fixed50": checks["throughput_vs_fixed50"] >= TARGETS["vs_fixed50"],
        "quality_ge_fixed50": checks["quality_ge_fixed50"],
        "evals_le_1.15x_oracle": checks["evals_vs_oracle"] <= TARGETS["evals_vs_oracle"],
        "evals_beat_best_fixed": checks["evals_beat_best_fixed"],
        "predictor_500_per_s": checks["predictor_prompts_per_s"] >= TARGETS["predictor_prompts_per_s"],
    }
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": a.threads, "predictor_threads": a.predictor_threads,
                    "loadavg_at_end": os.getloadavg()},
        "config": {"model": str(a.model), "stepsaver": str(a.stepsaver), "scheduler": scheduler, "prompts": n,
                   "batch_size": BATCH_SIZE, "threshold": threshold, "reference_steps": REFERENCE_STEPS, "grid": grid,
                   "risk": predictor.config.risk, "guidance_scale": core.guidance_scale, "smoke_test": a.smoke_test},
        "runs": table,
        "best_fixed_steps": best_fixed,
        "fixed_sweep_mean_ssim": {str(g): round(float(fixed[g]["ssim"].mean()), 4) for g in sorted(fixed)},
        "fixed_sweep_images_per_s": {str(g): round(fixed[g]["images_per_s"], 3) for g in sorted(fixed)},
        "predicted_steps_histogram": {str(g): int(sum(p == g for p in pred)) for g in grid},
        "oracle_steps_histogram": {str(g): int(sum(p == g for p in oracle_steps)) for g in counts},
        "prediction_vs_oracle": acc,
        "predictor": {"load_s": round(load_s, 2), "in_run_s": round(pred_s, 4), **speed},
        "calibration_variance_split": vsplit,
        "checks": checks,
        "targets_met": met,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print(f"\nStepSaver bench · {n} held-out prompts · {scheduler} · threshold {threshold} · risk {predictor.config.risk}")
    print(f"{'run':<16}{'images/s':>10}{'wall s':>9}{'UNet evals':>12}{'mean SSIM':>11}{'min SSIM':>10}{'≥thr':>7}")
    for name, r in table.items():
        print(f"{name:<16}{r['images_per_s']:>10.2f}{r['wall_s']:>9.1f}{r['unet_evals']:>12}{r['mean_ssim']:>11.4f}"
              f"{r['min_ssim']:>10.4f}{100 * r['share_ge_threshold']:>6.0f}%")
    sp = speed["synth"]
    print(f"predictor: {sp['prompts_per_s']:.0f} prompts/s ({sp['ms_per_prompt']:.2f} ms/prompt, synth)"
          + (f", {speed['diffusiondb']['prompts_per_s']:.0f} prompts/s (DiffusionDB)" if "diffusiondb" in speed else "")
          + f"; load {load_s:.1f}s")
    print(f"under-stepped (pred < oracle): {100 * acc['under_step_rate']:.1f}% · exact {100 * acc['exact']:.0f}% · "
          f"within one bucket {100 * acc['within_one_bucket']:.0f}% · mean steps pred {acc['mean_pred_steps']:.1f} "
          f"vs oracle {acc['mean_true_steps']:.1f}")
    if vsplit:
        print(f"calibration min_steps variance: {100 * vsplit['prompt_share']:.0f}% between prompts, "
              f"{100 * vsplit['seed_share']:.0f}% between seeds ({vsplit['prompts']} prompts, {vsplit['rows']} rows)")
    print("checks: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    print("targets met: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in met.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
