"""StepSaver frontier: mean quality vs UNet evaluations for every fixed step count, StepSaver, and the oracles.

One process, one machine, the same held-out prompts and seeds for every run:

1. **Sweep**: every held-out (prompt, seed) is generated at every count of the predictor's grid (batches of one
   count). Quality = SSIM to the same-seed 100-step image (the top of the grid). This gives the fixed-count curve
   and, per image, its quality at any grid count -- so StepSaver (whose predictions are grid counts) and the
   oracles are read off the same images: same seed and count ⇒ the same image.
2. **StepSaver** at several risk levels (its decoding knob: the accepted chance that a seed needs more steps):
   mean quality and Σ UNet evaluations of its per-prompt counts.
3. **StepSaver + the learned per-sample signal** (``models/early-stop``): StepSaver's prediction is the budget,
   the signal ends each sample once its x̂0 would already pass. Each (row, budget) runs once with stopping off,
   recording every check and scoring its decoded x̂0; every signal level is replayed from that run (a sample's stop
   depends only on its own checks, a tested property). One timed run with the real sampler checks the replay.
3b. **Adaptive per-sample steps** (``actors/adaptive.py``) at several tolerances, and the fixed DPM-Solver++(2M)
   curve (the solver adaptive steps are built on), scored against the same references: what per-sample step sizes
   buy over fixed counts of the same solver, and over the project's fixed DDIM curve.
4. **Oracles**: per sample (each image its own fewest count reaching a threshold) and per prompt (the fewest count
   at which every seed of the prompt passes), at several thresholds.
5. **Headline**: StepSaver's UNet evaluations ÷ the fixed-count curve's, linearly interpolated to the same mean
   quality (the fixed curve made monotone by a running max first). Also vs the per-sample oracle.
6. **Timed**: StepSaver end to end (predict + step-grouped generation) vs the fixed count of equal quality, best of
   ``--timing-rounds``; where the time goes (UNet vs text encoder + VAE + scheduler).
7. **Real prompts** (DiffusionDB, when ``../shared`` is present): what StepSaver predicts for prompts outside the
   world's vocabulary and what they really need on this model (swept like the rest).

Writes a JSON and a PNG plot.

    python -m bench.stepsaver                  # 200 held-out prompts + 24 real ones, ~35 min on 2 cores
    python -m bench.stepsaver --smoke-test     # 6 prompts, a minute
    python -m bench.stepsaver --prompt-seed 123457 --prompts 120 --real 0 --signal ''   # fresh validation set
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
MODEL = "models/tiny-sd"
STEPSAVER = "models/stepsaver"
SIGNAL = "models/early-stop"
SIGNAL_RISKS = (0.02, 0.05, 0.1, 0.2)  # StepSaver risks used as budgets for the signal (plus the trained one)
SIGNAL_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)  # replayed besides the calibrated level
N_PROMPTS = 200  # the minimum; the mean SSIM of 200 images moves < 0.001 between prompt draws
N_REAL = 24  # DiffusionDB prompts swept too: enough to see what out-of-world prompts need, cheap
SMOKE_PROMPTS = 6
HELDOUT_PROMPT_SEED = 90_001  # example_prompts stream never used for calibration prompts
IMAGE_SEED_BASE = 50_000  # image seeds disjoint from calibration's per-prompt seeds
BATCH_SIZE = 16  # rows per UNet batch, as the image job's default window fills them
NUM_THREADS = 2  # the machine's cores; one process, no Ray (its overhead would blur per-run timings)
RISKS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
ORACLE_THRESHOLDS = (0.98, 0.99, 0.995, 0.998)
ADAPTIVE_TOLS = (0.05, 0.02, 0.01, 0.005, 0.002)  # actors/adaptive.py's quality knob, loose to tight
DPM_COUNTS = (4, 6, 8, 10, 12, 15, 20, 25, 30)  # fixed DPM-Solver++ counts: the solver adaptive steps are built on
SPEED_PROMPTS = 2_000
TARGETS = {"evals_vs_fixed": 0.75, "evals_vs_fixed_stretch": 0.6, "evals_vs_oracle": 1.25, "vs_fixed100": 3.0,
           "signal_evals_vs_fixed": 0.65,
           "under_step_rate": 0.10, "predictor_prompts_per_s": 500}
DIFFUSIONDB = REPO.parent / "shared" / "data" / "prompts" / "diffusiondb-sample" / "refl_data.json"


# 1. Pure helpers ------------------------------------------------------------------------------------------------


def interp_evals(curve_q: np.ndarray, curve_e: np.ndarray, q: float) -> float:
    """UNet evaluations a curve needs for mean quality ``q`` (linear between points; the quality is made
    non-decreasing along the curve first). Beyond the curve's best quality: NaN."""
    qq = np.maximum.accumulate(np.asarray(curve_q, dtype=float))
    e = np.asarray(curve_e, dtype=float)
    if q <= qq[0]:
        return float(e[0])
    if q > qq[-1] + 1e-12:
        return float("nan")
    k = int(np.searchsorted(qq, q, side="left"))
    if qq[k] == qq[k - 1]:
        return float(e[k])
    f = (q - qq[k - 1]) / (qq[k] - qq[k - 1])
    return float(e[k - 1] + f * (e[k] - e[k - 1]))


def oracle_steps(Q: np.ndarray, grid: list[int], thr: float) -> np.ndarray:
    """Per row the fewest grid count with quality ≥ ``thr`` (the last count if none)."""
    ok = Q >= thr - 1e-12
    idx = np.where(ok.any(1), ok.argmax(1), len(grid) - 1)
    return np.asarray(grid)[idx]


def point(Q: np.ndarray, grid: list[int], steps, evals_per_step: float) -> dict:
    """Mean quality and UNet evaluations of running each row at its own grid count."""
    k = np.searchsorted(np.asarray(grid), np.asarray(steps))
    q = Q[np.arange(len(Q)), k]
    return {"mean_ssim": float(q.mean()), "min_ssim": float(q.min()), "unet_evals": float(np.sum(steps) * evals_per_step),
            "mean_steps": float(np.mean(steps))}


# 2. Running the model ------------------------------------------------------------------------------------------


class Runner:
    """Generates (prompt, seed) rows at per-row counts in one-count batches; counts UNet evals and UNet time."""

    def __init__(self, core, batch_size: int):
        self.core, self.batch_size, self.unet_s = core, batch_size, 0.0
        unet = core.pipe.unet
        unet.register_forward_pre_hook(lambda m, a: setattr(self, "_t", time.perf_counter()))
        unet.register_forward_hook(lambda m, a, o: setattr(self, "unet_s", self.unet_s + time.perf_counter() - self._t))

    def run(self, prompts: list[str], seeds: list[int], steps: list[int]) -> tuple[np.ndarray, dict]:
        from actors.diffusion import plan_batches

        images = np.zeros((len(prompts), self.core.height, self.core.width, 3), dtype=np.uint8)
        evals0, unet0, t0 = self.core.counter.evals, self.unet_s, time.perf_counter()
        for batch in plan_batches(steps, self.batch_size):
            images[batch] = self.core.generate([prompts[i] for i in batch], [seeds[i] for i in batch], steps[batch[0]])
        wall = time.perf_counter() - t0
        return images, {"wall_s": wall, "unet_s": self.unet_s - unet0, "unet_evals": self.core.counter.evals - evals0}


def ssim_to(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from pipelines.calibrate import image_quality

    return np.array([image_quality(a, b)[0] for a, b in zip(images, ref)])


def run_adaptive(sampler, guidance: float, prompts: list[str], seeds: list[int], tol: float, caps=None,
                 batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Adaptive per-sample steps over rows in batches: (uint8 images, steps per row, UNet evals, wall seconds)."""
    import torch

    from actors.diffusion import to_uint8

    images, steps, evals, t0 = [], [], 0, time.perf_counter()
    for s in range(0, len(prompts), batch_size):
        gens = [torch.Generator().manual_seed(int(x)) for x in seeds[s:s + batch_size]]
        cap = None if caps is None else np.asarray(caps[s:s + batch_size])
        out = sampler(prompts[s:s + batch_size], gens, guidance, tol=tol, max_steps=cap)
        images.append(to_uint8(out.images))
        steps += out.steps_run
        evals += out.unet_evals
    return np.concatenate(images), np.asarray(steps), evals, time.perf_counter() - t0


def heldout_prompts(n: int, exclude: set[str], seed: int = HELDOUT_PROMPT_SEED) -> tuple[list[str], int]:
    """``n`` fresh prompts of the world's mix not in the calibration set; also how many draws were excluded."""
    from dynagen.world.synth import example_prompts

    out, skipped = [], 0
    for p in example_prompts(n * 20, seed):
        if p in exclude or p in out:
            skipped += 1
            continue
        out.append(p)
        if len(out) == n:
            break
    return out, skipped


def real_prompts(n: int) -> list[str]:
    if not DIFFUSIONDB.is_file() or n <= 0:
        return []
    rows = json.loads(DIFFUSIONDB.read_text())
    texts = [x["text"] for x in rows if isinstance(x.get("text"), str) and 0 < len(x["text"].strip()) <= 300]
    return texts[-n:]  # the file's tail: calibration takes real prompts from its head


def predictor_speed(predictor, prompts: list[str], repeats: int = 3) -> dict:
    predictor.predict_steps(prompts[:64])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict_steps(prompts)
        times.append(time.perf_counter() - t0)
    return {"prompts": len(prompts), "prompts_per_s": len(prompts) / min(times)}


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fx = result["fixed"]
    ax.plot([r["evals_per_image"] for r in fx], [r["mean_ssim"] for r in fx], "o-", color="gray", label="fixed steps")
    for r in fx:
        ax.annotate(str(r["steps"]), (r["evals_per_image"], r["mean_ssim"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points", color="gray")
    ss = result["stepsaver"]
    ax.plot([r["evals_per_image"] for r in ss], [r["mean_ssim"] for r in ss], "s-", color="C0", label="StepSaver (risk levels)")
    sig = [r for r in result.get("stepsaver_signal") or [] if r["calibrated_level"]]
    if sig:
        ax.plot([r["evals_per_image"] for r in sig], [r["mean_ssim"] for r in sig], "D-", color="C3",
                label="StepSaver + learned signal (calibrated level)")
    dp, ad = result.get("fixed_dpm") or [], result.get("adaptive") or []
    if dp:
        ax.plot([r["evals_per_image"] for r in dp], [r["mean_ssim"] for r in dp], "o--", color="C7", alpha=0.8,
                label="fixed steps, DPM-Solver++(2M)")
    if ad:
        ax.plot([r["evals_per_image"] for r in ad], [r["mean_ssim"] for r in ad], "P-", color="C2",
                label="adaptive per-sample steps (tolerances)")
    for key, style, label in (("oracle_sample", "^--", "oracle per sample"), ("oracle_prompt", "v:", "oracle per prompt")):
        o = result.get(key) or []
        if o:
            ax.plot([r["evals_per_image"] for r in o], [r["mean_ssim"] for r in o], style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("UNet evaluations per image (log)")
    ax.set_ylabel("mean SSIM to the same-seed 100-step image")
    ax.set_ylim(max(0.85, min(r["mean_ssim"] for r in fx) - 0.01), 1.0005)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"tiny-sd, {result['config']['prompts']} held-out prompts: quality vs compute")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


# 3. The bench --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_PROMPTS} prompts, no real prompts")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--stepsaver", default=STEPSAVER)
    ap.add_argument("--signal", default=SIGNAL, help="learned early-stop signal folder ('' = skip those runs)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--prompt-seed", type=int, default=HELDOUT_PROMPT_SEED,
                    help="held-out prompt stream; another value gives a fresh validation set (its settings were not "
                    "chosen on it)")
    ap.add_argument("--seeds", type=int, default=1, help="image seeds per prompt (≥ 2 for the per-prompt oracle)")
    ap.add_argument("--real", type=int, default=N_REAL, help="DiffusionDB prompts to sweep too")
    ap.add_argument("--threads", type=int, default=NUM_THREADS)
    ap.add_argument("--timing-rounds", type=int, default=2)
    ap.add_argument("--adaptive-tols", default=",".join(map(str, ADAPTIVE_TOLS)),
                    help="adaptive-step tolerances to run ('' = skip adaptive steps and the fixed DPM-Solver++ curve)")
    ap.add_argument("--out", default="out/bench/stepsaver.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: beside --out)")
    a = ap.parse_args(argv)

    import torch

    from actors.diffusion import DiffusionCore
    from actors.stepsaver import StepPredictor
    from dynagen.world import synth
    from dynagen.core.records import model_fingerprint
    from pipelines.calibrate import read_calibration

    torch.set_num_threads(a.threads)
    n = a.prompts or (SMOKE_PROMPTS if a.smoke_test else N_PROMPTS)
    n_real = 0 if a.smoke_test else a.real

    # 1. Predictor; held-out prompts (never calibrated on) and real ones; seeds disjoint from calibration
    predictor = StepPredictor.load(a.stepsaver, num_threads=a.threads)
    cal = predictor.config.calibration
    grid = predictor.grid
    train_set = set()
    for f in sorted(Path(a.stepsaver).glob("calibration*.parquet")):
        train_set |= set(read_calibration(f).column("prompt").to_pylist())
    prompts, excluded = heldout_prompts(n, train_set, a.prompt_seed)
    reals = [p for p in real_prompts(n_real) if p not in train_set]
    all_prompts = prompts + reals
    rows_p = [p for p in all_prompts for _ in range(a.seeds)]
    rows_s = [IMAGE_SEED_BASE + 997 * i + k for i in range(len(all_prompts)) for k in range(a.seeds)]
    is_real = np.array([i >= len(prompts) for i in range(len(all_prompts)) for _ in range(a.seeds)])
    if cal.get("model_unet_sha256") and model_fingerprint(a.model) not in ("", cal["model_unet_sha256"]):
        print(f"WARNING: {a.model} is not the model the predictor was calibrated on (UNet hash differs)", file=sys.stderr)
    scheduler = cal.get("scheduler", "ddim")
    core = DiffusionCore(a.model, scheduler, batch_size=BATCH_SIZE, num_threads=a.threads)
    runner = Runner(core, BATCH_SIZE)
    core.generate(rows_p[:2], rows_s[:2], 2)  # warm-up out of the timed runs

    # 2. Sweep every grid count (the top of the grid is the reference)
    ref_steps = grid[-1]
    t_sweep = time.perf_counter()
    ref, ref_stats = runner.run(rows_p, rows_s, [ref_steps] * len(rows_p))
    Q = np.ones((len(rows_p), len(grid)))
    timing = {ref_steps: ref_stats}
    for k, g in enumerate(grid[:-1]):
        imgs, timing[g] = runner.run(rows_p, rows_s, [g] * len(rows_p))
        Q[:, k] = ssim_to(imgs, ref)
        print(f"[bench] fixed {g:3d}: mean SSIM {Q[~is_real, k].mean():.4f} · {time.perf_counter() - t_sweep:.0f}s",
              flush=True)
    sweep_evals = sum(t["unet_evals"] for t in timing.values())
    evals_per_step = sweep_evals / (len(rows_p) * sum(grid))  # 2 with classifier-free guidance
    unet_share = sum(t["unet_s"] for t in timing.values()) / sum(t["wall_s"] for t in timing.values())

    W = ~is_real  # the world's held-out rows: the frontier is measured on these
    Qw, pw = Q[W], [p for p, r in zip(rows_p, is_real) if not r]

    # 3. Fixed curve, StepSaver at each risk, oracles
    fixed = [{"steps": g, "evals_per_image": g * evals_per_step, **point(Qw, grid, [g] * len(Qw), evals_per_step)}
             for g in grid]
    fq, fe = np.array([r["mean_ssim"] for r in fixed]), np.array([r["unet_evals"] for r in fixed])
    uniq = list(dict.fromkeys(pw))
    risks = sorted(set(RISKS) | {predictor.config.risk})
    stepsaver, steps_by_risk = [], {}
    for r in risks:
        pred = dict(zip(uniq, predictor.predict_steps(uniq, risk=r)))
        steps = steps_by_risk[r] = np.array([pred[p] for p in pw])
        pt = point(Qw, grid, steps, evals_per_step)
        pt.update(risk=r, evals_per_image=pt["unet_evals"] / len(Qw), trained_risk=r == predictor.config.risk,
                  evals_vs_fixed_same_quality=pt["unet_evals"] / interp_evals(fq, fe, pt["mean_ssim"]),
                  steps_histogram={str(g): int(np.sum(steps == g)) for g in grid if np.any(steps == g)})
        stepsaver.append(pt)
    oracle_sample, oracle_prompt = [], []
    for thr in ORACLE_THRESHOLDS:
        st = oracle_steps(Qw, grid, thr)
        oracle_sample.append({"threshold": thr, **point(Qw, grid, st, evals_per_step)})
        if a.seeds > 1:  # per prompt: the fewest count at which every seed of the prompt passes
            per = {}
            for p, s in zip(pw, st):
                per[p] = max(per.get(p, 0), int(s))
            oracle_prompt.append({"threshold": thr, **point(Qw, grid, [per[p] for p in pw], evals_per_step)})
    for o in oracle_sample + oracle_prompt:
        o["evals_per_image"] = o["unet_evals"] / len(Qw)
    oq, oe = np.array([o["mean_ssim"] for o in oracle_sample]), np.array([o["unet_evals"] for o in oracle_sample])
    for pt in stepsaver:
        pt["evals_vs_oracle_same_quality"] = pt["unet_evals"] / interp_evals(oq, oe, pt["mean_ssim"])

    # Adaptive per-sample steps (actors/adaptive.py): each image's own step sizes from its own x̂0 history. Compared
    # with the fixed DDIM curve (the project's sampler) and with fixed DPM-Solver++(2M), the solver it adapts: the
    # second comparison separates what adaptivity buys from what a second-order solver buys.
    adaptive, dpm_fixed, adaptive_cap = [], [], []
    tols = [float(x) for x in a.adaptive_tols.split(",") if x.strip()]
    wi = np.flatnonzero(W)
    ws_rows = [rows_s[i] for i in wi]
    if tols:
        from actors.adaptive import DEFAULT_TOL, AdaptiveSampler

        drun = Runner(DiffusionCore(a.model, "dpm++", batch_size=BATCH_SIZE, num_threads=a.threads), BATCH_SIZE)
        for g in DPM_COUNTS:
            imgs, st = drun.run(pw, ws_rows, [g] * len(pw))
            q = ssim_to(imgs, ref[wi])
            dpm_fixed.append({"steps": g, "mean_steps": float(g), "mean_ssim": float(q.mean()), "min_ssim": float(q.min()),
                              "unet_evals": float(st["unet_evals"]), "evals_per_image": st["unet_evals"] / len(pw),
                              "wall_s": round(st["wall_s"], 2)})
            print(f"[bench] fixed dpm++ {g:3d}: mean SSIM {q.mean():.4f}", flush=True)
        dq, de = np.array([r["mean_ssim"] for r in dpm_fixed]), np.array([r["unet_evals"] for r in dpm_fixed])
        sampler = AdaptiveSampler(core.pipe)

        def adaptive_point(tol, caps=None) -> dict:
            imgs, st, ev, wall = run_adaptive(sampler, core.guidance_scale, pw, ws_rows, tol, caps)
            q = ssim_to(imgs, ref[wi])
            return {"tol": tol, "mean_steps": float(st.mean()), "min_steps": int(st.min()), "max_steps": int(st.max()),
                    "steps_p10_p90": [float(np.percentile(st, 10)), float(np.percentile(st, 90))],
                    "mean_ssim": float(q.mean()), "min_ssim": float(q.min()), "unet_evals": float(ev),
                    "evals_per_image": ev / len(pw), "wall_s": round(wall, 2),
                    "evals_vs_fixed_same_quality": ev / interp_evals(fq, fe, float(q.mean())),
                    "evals_vs_dpm_fixed_same_quality": ev / interp_evals(dq, de, float(q.mean())),
                    "default_tol": tol == DEFAULT_TOL}

        for tol in sorted(set(tols) | {DEFAULT_TOL}, reverse=True):
            adaptive.append(adaptive_point(tol))
            r = adaptive[-1]
            print(f"[bench] adaptive tol {tol}: {r['mean_steps']:.1f} steps ({r['min_steps']}-{r['max_steps']}), "
                  f"mean SSIM {r['mean_ssim']:.4f}, {r['evals_vs_fixed_same_quality']:.2f}× fixed DDIM, "
                  f"{r['evals_vs_dpm_fixed_same_quality']:.2f}× fixed DPM++", flush=True)
        # StepSaver's prediction as each sample's step cap (the prompt's budget), at the default tolerance
        for r in (predictor.config.risk,):
            pt = adaptive_point(DEFAULT_TOL, caps=steps_by_risk[r])
            pt.update(risk=r)
            adaptive_cap.append(pt)

    # StepSaver + learned signal: replayed from one recorded run per (row, budget)
    stepsaver_signal, signal_meta = [], {}
    if a.signal and (Path(a.signal) / "signal.json").is_file():
        from actors.early_stop import EarlyStopConfig, EarlyStopSampler, LearnedSignal, signal_features
        from pipelines.training.early_stop import record_checks, replay

        sig = LearnedSignal.load(a.signal)
        sig_cfg = EarlyStopConfig(signal=sig, interval=int(sig.meta.get("interval", 2)),
                                  min_steps=int(sig.meta.get("min_steps", 6)))
        sig_risks = sorted(set(SIGNAL_RISKS) | {predictor.config.risk})  # all among `risks`: predicted above
        budgets_by_risk = {r: steps_by_risk[r] for r in sig_risks}
        pairs = sorted({(i, int(b)) for r in sig_risks for i, b in enumerate(budgets_by_risk[r])})
        t_rec = time.perf_counter()
        recorder = EarlyStopSampler(core.pipe, EarlyStopConfig(threshold=0.0, interval=sig_cfg.interval, min_steps=1))
        tr = record_checks(recorder, core.guidance_scale, [pw[i] for i, _ in pairs], [rows_s[wi[i]] for i, _ in pairs],
                           [b for _, b in pairs], ref[[wi[i] for i, _ in pairs]], BATCH_SIZE)
        tr["run"] = tr["row"]  # one run per (row, budget) pair: its index in `pairs`
        grid_ix = {g: k for k, g in enumerate(grid)}  # the budget's final image is the sweep's own
        tr["final_ssim_ref"] = np.array([Qw[pairs[j][0], grid_ix[pairs[j][1]]] for j in tr["run"]])
        x = signal_features(tr["step"], tr["budget"], tr["t"], tr["rate"], tr["rate_prev"],
                            core.pipe.scheduler.config.num_train_timesteps)
        prob = np.where(np.isnan(tr["rate"]), 0.0, sig.prob(np.nan_to_num(x)))
        pair_ix = {pq: j for j, pq in enumerate(pairs)}
        for r in sig_risks:
            run_ids = [pair_ix[(i, int(b))] for i, b in enumerate(budgets_by_risk[r])]
            for lv in sorted(set(SIGNAL_LEVELS) | {sig.level}):
                rep = replay(tr, prob >= lv, sig_cfg.min_steps)
                by_run = dict(zip(rep["run"].tolist(), zip(rep["steps"], rep["ssim"])))
                st = np.array([by_run[j][0] for j in run_ids])
                q = np.array([by_run[j][1] for j in run_ids])
                ev = float(st.sum() * evals_per_step)
                stepsaver_signal.append({
                    "risk": r, "level": lv, "calibrated_level": lv == sig.level, "trained_risk": r == predictor.config.risk,
                    "mean_ssim": float(q.mean()), "min_ssim": float(q.min()), "unet_evals": ev,
                    "evals_per_image": ev / len(Qw), "mean_steps": float(st.mean()),
                    "mean_budget": float(budgets_by_risk[r].mean()),
                    "stopped_share": float(np.mean(st < budgets_by_risk[r])),
                    "evals_vs_fixed_same_quality": ev / interp_evals(fq, fe, float(q.mean())),
                    "evals_vs_oracle_same_quality": ev / interp_evals(oq, oe, float(q.mean()))})
        signal_meta = {"signal": Path(a.signal).name, "level": sig.level, "label": sig.meta.get("label"),
                       "criterion": sig.meta.get("criterion"), "recorded_runs": len(pairs),
                       "record_wall_s": round(time.perf_counter() - t_rec, 1),
                       "signal_model_unet_sha256": sig.meta.get("model_unet_sha256")}
        print(f"[bench] StepSaver + signal: {len(pairs)} runs recorded in {signal_meta['record_wall_s']:.0f}s", flush=True)

    main_pt = next(p for p in stepsaver if p["trained_risk"])
    main_sig = next((p for p in stepsaver_signal if p["trained_risk"] and p["calibrated_level"]), None)
    best_sig = min((p for p in stepsaver_signal if p["calibrated_level"]),
                   key=lambda p: p["evals_vs_fixed_same_quality"], default=None)
    thr = float(cal.get("threshold", 0.995))
    label = oracle_steps(Qw, grid, thr)
    main_pred = dict(zip(uniq, predictor.predict_steps(uniq)))
    pred_main = np.array([main_pred[p] for p in pw])
    under = float(np.mean(pred_main < label))
    q50 = next(r["mean_ssim"] for r in fixed if r["steps"] == 50)
    at50 = [p for p in stepsaver if p["mean_ssim"] >= q50 - 1e-12]
    best_at50 = min(at50, key=lambda p: p["unet_evals"]) if at50 else None
    fixed100 = next(r for r in fixed if r["steps"] == ref_steps)

    # Per prompt class: predicted vs needed steps (at the calibration threshold)
    classes = {}
    for c in ("flat", "fine", "many", "vague"):
        m = np.array([synth.prompt_class(p) == c for p in pw])
        if m.any():
            classes[c] = {"rows": int(m.sum()), "mean_predicted": float(pred_main[m].mean()),
                          "mean_needed": float(label[m].mean()), "under_step_rate": float(np.mean(pred_main[m] < label[m]))}

    # 4. Real prompts: what StepSaver says vs what they need
    real = {}
    if is_real.any():
        rp = [p for p, r in zip(rows_p, is_real) if r]
        need = oracle_steps(Q[is_real], grid, thr)
        got = np.array(predictor.predict_steps(rp))
        real = {"rows": int(is_real.sum()), "mean_predicted": float(got.mean()), "mean_needed": float(need.mean()),
                "median_needed": float(np.median(need)), "under_step_rate": float(np.mean(got < need)),
                "predicted_histogram": {str(g): int(np.sum(got == g)) for g in grid if np.any(got == g)}}
    if DIFFUSIONDB.is_file() and not a.smoke_test:
        many_real = real_prompts(2_000)
        got = np.array(predictor.predict_steps(many_real))
        real["diffusiondb_2000_predicted_mean"] = float(got.mean())
        real["diffusiondb_2000_predicted_histogram"] = {str(g): int(np.sum(got == g)) for g in grid if np.any(got == g)}

    # 5. Timed end to end: StepSaver (predict + grouped generation) vs the fixed count of equal quality
    eq_fixed = next((r["steps"] for r in fixed if r["mean_ssim"] >= main_pt["mean_ssim"] - 1e-12), ref_steps)
    wp = [p for p, r in zip(rows_p, is_real) if not r]
    ws = [s for s, r in zip(rows_s, is_real) if not r]
    walls = {"stepsaver": [], f"fixed_{eq_fixed}": []}
    for _ in range(max(1, a.timing_rounds)):
        t0 = time.perf_counter()
        steps = predictor.predict_steps(wp)
        runner.run(wp, ws, steps)
        walls["stepsaver"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        runner.run(wp, ws, [eq_fixed] * len(wp))
        walls[f"fixed_{eq_fixed}"].append(time.perf_counter() - t0)
    if main_sig is not None:  # the real sampler, to check the replay and time it
        es_runner = Runner(DiffusionCore(a.model, scheduler, batch_size=BATCH_SIZE, num_threads=a.threads,
                                         early_stop=True, early_stop_signal=a.signal), BATCH_SIZE)
        walls["stepsaver + signal"] = []
        for _ in range(max(1, a.timing_rounds)):
            t0 = time.perf_counter()
            imgs, stats = es_runner.run(wp, ws, predictor.predict_steps(wp))
            walls["stepsaver + signal"].append(time.perf_counter() - t0)
        main_sig["real_run"] = {"unet_evals": stats["unet_evals"],
                                "mean_ssim": float(ssim_to(imgs, ref[np.flatnonzero(W)]).mean())}
    timed = {k: {"best_wall_s": round(min(v), 2), "images_per_s": round(len(wp) / min(v), 3),
                 "all_s": [round(x, 2) for x in v]} for k, v in walls.items()}

    speed = predictor_speed(predictor, synth.example_prompts(256 if a.smoke_test else SPEED_PROMPTS, 4242))

    # 6. Report
    headline = main_pt["evals_vs_fixed_same_quality"]
    ad_main = next((r for r in adaptive if r["default_tol"]), None)
    ad_at50 = min((r for r in adaptive if r["mean_ssim"] >= q50 - 1e-12), key=lambda r: r["unet_evals"], default=None)
    met = {
        "evals_le_0.75x_fixed_same_quality": headline <= TARGETS["evals_vs_fixed"],
        "evals_le_0.6x_fixed_stretch": headline <= TARGETS["evals_vs_fixed_stretch"],
        "evals_le_1.25x_oracle_sample": main_pt["evals_vs_oracle_same_quality"] <= TARGETS["evals_vs_oracle"],
        "3x_fewer_than_fixed100_at_fixed50_quality": bool(best_at50)
        and fixed100["unet_evals"] / best_at50["unet_evals"] >= TARGETS["vs_fixed100"],
        "under_step_le_10pct": under <= TARGETS["under_step_rate"],
        "signal_evals_le_0.65x_fixed_same_quality": bool(main_sig)
        and main_sig["evals_vs_fixed_same_quality"] <= TARGETS["signal_evals_vs_fixed"],
        "predictor_500_per_s": speed["prompts_per_s"] >= TARGETS["predictor_prompts_per_s"],
        # the per-sample signal as adaptive step sizes (actors/adaptive.py), at its default tolerance
        "adaptive_evals_le_0.65x_fixed_same_quality": bool(ad_main)
        and ad_main["evals_vs_fixed_same_quality"] <= TARGETS["signal_evals_vs_fixed"],
        "adaptive_3x_fewer_than_fixed100_at_fixed50_quality": bool(ad_at50)
        and fixed100["unet_evals"] / ad_at50["unet_evals"] >= TARGETS["vs_fixed100"],
    }
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": a.threads},
        "config": {"model": Path(a.model).name, "model_unet_sha256": model_fingerprint(a.model),
                   "stepsaver": Path(a.stepsaver).name, "scheduler": scheduler, "prompts": len(prompts),
                   "prompt_seed": a.prompt_seed,
                   "seeds": a.seeds, "real_prompts": len(reals), "heldout_draws_excluded_as_seen": excluded,
                   "grid": grid, "reference_steps": ref_steps, "calibration_threshold": thr,
                   "trained_risk": predictor.config.risk, "batch_size": BATCH_SIZE, "smoke_test": a.smoke_test},
        "fixed": fixed, "stepsaver": stepsaver, "stepsaver_signal": stepsaver_signal, "signal": signal_meta,
        "fixed_dpm": dpm_fixed, "adaptive": adaptive, "adaptive_stepsaver_cap": adaptive_cap,
        "oracle_sample": oracle_sample, "oracle_prompt": oracle_prompt,
        "headline": {"stepsaver_evals_vs_fixed_same_quality": headline,
                     "stepsaver_evals_vs_oracle_sample_same_quality": main_pt["evals_vs_oracle_same_quality"],
                     "fixed100_evals_over_best_stepsaver_at_fixed50_quality":
                         fixed100["unet_evals"] / best_at50["unet_evals"] if best_at50 else None,
                     "fixed50_mean_ssim": q50, "under_step_rate": under,
                     "signal_evals_vs_fixed_same_quality": main_sig["evals_vs_fixed_same_quality"] if main_sig else None,
                     "signal_evals_vs_oracle_sample_same_quality":
                         main_sig["evals_vs_oracle_same_quality"] if main_sig else None,
                     # chosen on this bench's own rows: an optimistic figure, reported as such
                     "signal_best_risk_at_calibrated_level": best_sig["risk"] if best_sig else None,
                     "signal_best_evals_vs_fixed_same_quality": best_sig["evals_vs_fixed_same_quality"] if best_sig else None,
                     "adaptive_default_tol": ad_main["tol"] if ad_main else None,
                     "adaptive_evals_vs_fixed_same_quality": ad_main["evals_vs_fixed_same_quality"] if ad_main else None,
                     "adaptive_evals_vs_dpm_fixed_same_quality":
                         ad_main["evals_vs_dpm_fixed_same_quality"] if ad_main else None,
                     "adaptive_evals_vs_oracle_sample_same_quality":
                         ad_main["unet_evals"] / interp_evals(oq, oe, ad_main["mean_ssim"]) if ad_main else None,
                     "fixed100_evals_over_best_adaptive_at_fixed50_quality":
                         fixed100["unet_evals"] / ad_at50["unet_evals"] if ad_at50 else None},
        "classes": classes, "real_prompts": real, "timed": timed,
        "time_split": {"unet_share_of_generation_wall": unet_share, "evals_per_sample_step": evals_per_step,
                       "sweep_wall_s": round(sum(t["wall_s"] for t in timing.values()), 1)},
        "predictor_prompts_per_s": speed["prompts_per_s"],
        "targets_met": met,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    png = Path(a.plot) if a.plot else out.with_suffix(".png")
    plotted = plot(result, png)

    print(f"\nStepSaver frontier · {len(prompts)} held-out prompts × {a.seeds} seed(s) · {scheduler} · "
          f"quality = SSIM to the {ref_steps}-step image")
    print(f"{'run':<26}{'mean steps':>11}{'evals/img':>10}{'mean SSIM':>11}{'min SSIM':>10}{'vs fixed':>10}")
    for r in fixed:
        print(f"{'fixed ' + str(r['steps']):<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}"
              f"{r['mean_ssim']:>11.4f}{r['min_ssim']:>10.4f}")
    for r in stepsaver:
        name = f"StepSaver risk {r['risk']}" + (" *" if r["trained_risk"] else "")
        print(f"{name:<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}{r['mean_ssim']:>11.4f}"
              f"{r['min_ssim']:>10.4f}{r['evals_vs_fixed_same_quality']:>9.2f}×")
    for r in stepsaver_signal:
        if not r["calibrated_level"] and r["level"] not in (0.7, 0.9):
            continue
        name = f"+signal r{r['risk']} p≥{r['level']}" + (" *" if r["trained_risk"] and r["calibrated_level"] else "")
        print(f"{name:<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}{r['mean_ssim']:>11.4f}"
              f"{r['min_ssim']:>10.4f}{r['evals_vs_fixed_same_quality']:>9.2f}×")
    for r in dpm_fixed:
        print(f"{'fixed dpm++ ' + str(r['steps']):<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}"
              f"{r['mean_ssim']:>11.4f}{r['min_ssim']:>10.4f}{r['unet_evals'] / interp_evals(fq, fe, r['mean_ssim']):>9.2f}×")
    for r in adaptive + adaptive_cap:
        name = f"adaptive tol {r['tol']}" + (f" cap r{r['risk']}" if "risk" in r else "") + (" *" if r["default_tol"] else "")
        print(f"{name:<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}{r['mean_ssim']:>11.4f}"
              f"{r['min_ssim']:>10.4f}{r['evals_vs_fixed_same_quality']:>9.2f}× ({r['evals_vs_dpm_fixed_same_quality']:.2f}× dpm++)")
    for key, rows in (("oracle/sample", oracle_sample), ("oracle/prompt", oracle_prompt)):
        for r in rows:
            print(f"{key + ' ' + str(r['threshold']):<26}{r['mean_steps']:>11.1f}{r['evals_per_image']:>10.1f}"
                  f"{r['mean_ssim']:>11.4f}{r['min_ssim']:>10.4f}{r['unet_evals'] / interp_evals(fq, fe, r['mean_ssim']):>9.2f}×")
    print("per class (predicted / needed steps, under-stepped): " + "; ".join(
        f"{c} {v['mean_predicted']:.1f}/{v['mean_needed']:.1f} {100 * v['under_step_rate']:.0f}%" for c, v in classes.items()))
    if real:
        print(f"real prompts: {real.get('rows', 0)} swept, predicted {real.get('mean_predicted', float('nan')):.1f} vs needed "
              f"{real.get('mean_needed', float('nan')):.1f} mean steps")
    print(f"timed: " + ", ".join(f"{k} {v['images_per_s']:.2f} img/s" for k, v in timed.items())
          + f" · UNet share of generation time {100 * unet_share:.0f}%")
    if main_sig and "real_run" in main_sig:
        rr = main_sig["real_run"]
        print(f"StepSaver + signal, real sampler: {rr['unet_evals'] / len(wp):.1f} evals/img, mean SSIM "
              f"{rr['mean_ssim']:.4f} (replay: {main_sig['evals_per_image']:.1f}, {main_sig['mean_ssim']:.4f})")
    print(f"predictor: {speed['prompts_per_s']:.0f} prompts/s · held-out under-step rate {100 * under:.1f}%")
    print("targets met: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in met.items()))
    print(f"wrote {out}" + (f" and {png}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
