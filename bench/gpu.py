"""GPU figures: per-family images/s at half precision vs float32, tiny-sd's batch scaling, and the whole image job on
a GPU actor.

Three sections, each written to the metrics JSON:

* **families**: every family's tiny random pipeline (``dynagen/world/tiny_families.py``: the real classes, tiny
  weights) through ``actors.diffusion.DiffusionCore`` at float32, float16 and bfloat16: images/s over ``REPEATS``
  timed batches after one warm-up batch. Tiny models measure the per-call overheads a family's pipeline adds (text
  encoders, scheduler, VAE), not the real model's throughput.
* **tiny_sd_batch**: the embedded tiny-sd (``models/tiny-sd``) at batch 8, 32 and 128, float16 and float32: how far a
  GPU call's cost is from flat in its batch (what continuous batching bets on).
* **dtype_drift**: how far half-precision images move from float32's on the trained tiny-sd (SSIM, levels).
* **job**: ``pipelines.images.run`` over ``JOB_PROMPTS`` prompts with ``images.gpus_per_actor=1`` (one actor holding
  the GPU), fixed steps: end-to-end images/s including Ray, reading and writing.

    python -m bench.gpu                  # a CUDA machine: bench/results/gpu.json
    python -m bench.gpu --smoke-test     # CPU, toy sizes, every section once: checks the script, not a figure
    python -m bench.gpu --cpu            # CPU figures for images.dtype's CPU default: bench/results/cpu_dtypes.json

Not run on a GPU yet (no GPU machine in the session that wrote it): the README says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Tuning constants, with why.
STEPS = 20  # a typical production step count; per-step cost dominates, so images/s scales ~1/STEPS
FAMILY_BATCH = 8  # the job's default images.batch_size
REPEATS = 5  # timed batches per point after one warm-up (the first call pays cuDNN autotuning / allocator growth)
DTYPES = ("float32", "float16", "bfloat16")
TINY_SD_BATCHES = (8, 32, 128)  # the points: the default, a full GPU batch, a large one
JOB_PROMPTS = 256
OUT = "bench/results/gpu.json"
CPU_OUT = "bench/results/cpu_dtypes.json"
SMOKE = dict(steps=2, family_batch=2, repeats=1, dtypes=("float32", "bfloat16"), tiny_sd_batches=(1, 2),
             job_prompts=4)
# --cpu: the dtype default's CPU side (float32 vs bfloat16; diffusers warns against float16 on CPU), at sizes 2 cores
# finish in minutes. The job section is left out: bench/pipeline.py measures the job on CPU.
CPU = dict(steps=10, family_batch=4, repeats=3, dtypes=("float32", "bfloat16"), tiny_sd_batches=(8, 32), job_prompts=0)


def _rate(core, batch: int, steps: int, repeats: int) -> dict:
    prompts = [f"a red circle number {i}" for i in range(batch)]
    core.generate(prompts, list(range(batch)), steps)  # warm-up
    t0 = time.perf_counter()
    for r in range(repeats):
        core.generate(prompts, [r * batch + i for i in range(batch)], steps)
    wall = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "images_per_s": round(batch * repeats / wall, 3),
            "s_per_batch": round(wall / repeats, 4)}


def bench_families(device: str, steps: int, batch: int, repeats: int, dtypes, tmp: Path) -> dict:
    from actors.diffusion import DiffusionCore
    from dynagen.world.tiny_families import FAMILY_NAMES, save_family

    out = {}
    for name in FAMILY_NAMES:
        path = save_family(name, tmp / name)
        out[name] = {}
        for dtype in dtypes:
            core = DiffusionCore(path, batch_size=batch, device=device, dtype=dtype)
            out[name][dtype] = _rate(core, batch, steps, repeats)
            del core
        base = out[name]["float32"]["images_per_s"]
        out[name]["speedup_vs_float32"] = {d: round(out[name][d]["images_per_s"] / base, 3) for d in dtypes}
        print(f"{name}: " + ", ".join(f"{d} {out[name][d]['images_per_s']:.1f} img/s" for d in dtypes), flush=True)
    return out


def bench_tiny_sd(device: str, steps: int, batches, repeats: int, dtypes, model: str) -> dict:
    from actors.diffusion import DiffusionCore

    out = {}
    for dtype in dtypes:
        core = DiffusionCore(model, batch_size=max(batches), device=device, dtype=dtype)
        out[dtype] = [_rate(core, b, steps, repeats) for b in batches]
        print(f"tiny-sd {dtype}: " + ", ".join(f"batch {r['batch']} {r['images_per_s']:.1f} img/s" for r in out[dtype]),
              flush=True)
    return out


def dtype_drift(device: str, steps: int, model: str, dtypes, prompts: int = 8) -> dict:
    """How far each dtype's images move from float32's (same prompts, seeds, steps) on the trained tiny-sd: SSIM and
    mean absolute difference in levels of 255. A dtype that moves images moves StepSaver's calibration with them."""
    from actors.diffusion import DiffusionCore
    from pipelines.calibrate import image_quality

    texts = [f"a red circle number {i}" for i in range(prompts)]
    images = {d: DiffusionCore(model, batch_size=prompts, device=device, dtype=d).generate(texts, list(range(prompts)),
                                                                                          steps)
              for d in dtypes}
    out = {}
    for d in dtypes:
        if d == "float32":
            continue
        ssim = [image_quality(a, b)[0] for a, b in zip(images[d], images["float32"])]
        out[d] = {"mean_ssim_to_float32": round(float(sum(ssim) / len(ssim)), 4),
                  "min_ssim_to_float32": round(float(min(ssim)), 4),
                  "mean_abs_diff_levels": round(float(abs(images[d].astype(int) - images["float32"].astype(int)).mean()), 2)}
        print(f"tiny-sd {d} vs float32: mean SSIM {out[d]['mean_ssim_to_float32']}", flush=True)
    return out


def bench_job(gpus: float, steps: int, prompts: int, tmp: Path, model: str) -> dict:
    from dynagen.core.settings import load_settings
    from pipelines.images import run

    src = tmp / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"a red circle number {i}", "id": f"p{i}"}) + "\n"
                           for i in range(prompts)))
    over = {"images.model": model, "images.steps": steps, "images.gpus_per_actor": gpus, "images.batch_size": 32,
            "images.cpus_per_actor": 1.0}
    settings = load_settings(None, over, env={})[0]
    t0 = time.perf_counter()
    s = run(settings, str(src), str(tmp / "out"))
    wall = time.perf_counter() - t0
    out = {"prompts": prompts, "steps": steps, "gpus_per_actor": gpus, "ok": s.ok, "failed": s.failed,
           "wall_s": round(wall, 2), "images_per_s": round(s.ok / wall, 3), "unet_evals": s.unet_evals}
    print(f"job: {s.ok} images in {wall:.1f}s = {out['images_per_s']:.2f} img/s", flush=True)
    return out


def machine(device: str) -> dict:
    import platform

    import torch

    info = {"torch": torch.__version__, "device": device, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke-test", action="store_true", help="CPU, toy sizes: checks every section runs")
    p.add_argument("--sections", default="families,tiny_sd_batch,dtype_drift,job")
    p.add_argument("--cpu", action="store_true", help="float32 vs bfloat16 on CPU (families, tiny-sd batches)")
    p.add_argument("--model", default="models/tiny-sd")
    p.add_argument("--out", default=None, help=f"metrics JSON (default {OUT}; --cpu: {CPU_OUT})")
    a = p.parse_args(argv)
    out_path = a.out or (CPU_OUT if a.cpu else OUT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if a.smoke_test:
        device, cfg, gpus = "cpu", SMOKE, 0.0
    elif a.cpu:
        device, cfg, gpus = "cpu", CPU, 0.0
        a.sections = ",".join(x for x in a.sections.split(",") if x != "job")
    elif torch.cuda.is_available():
        device, gpus = "cuda", 1.0
        cfg = dict(steps=STEPS, family_batch=FAMILY_BATCH, repeats=REPEATS, dtypes=DTYPES,
                   tiny_sd_batches=TINY_SD_BATCHES, job_prompts=JOB_PROMPTS)
    else:
        print("error: no CUDA device here; run on a GPU machine, or --smoke-test to check the script on CPU",
              file=sys.stderr)
        return 2
    sections = set(a.sections.split(","))
    mode = "smoke" if a.smoke_test else "cpu" if a.cpu else "gpu"
    result: dict = {"smoke_test": a.smoke_test, "mode": mode, "machine": machine(device), "config": {k: list(v) if isinstance(v, tuple)
                                                                                      else v for k, v in cfg.items()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "families" in sections:
            result["families"] = bench_families(device, cfg["steps"], cfg["family_batch"], cfg["repeats"], cfg["dtypes"], tmp)
        if "tiny_sd_batch" in sections:
            result["tiny_sd_batch"] = bench_tiny_sd(device, cfg["steps"], cfg["tiny_sd_batches"], cfg["repeats"],
                                                    cfg["dtypes"], a.model)
        if "dtype_drift" in sections:
            result["dtype_drift"] = dtype_drift(device, cfg["steps"], a.model, cfg["dtypes"])
        if "job" in sections:
            result["job"] = bench_job(gpus, cfg["steps"], cfg["job_prompts"], tmp, a.model)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
