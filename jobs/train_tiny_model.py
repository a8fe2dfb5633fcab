"""Train the embedded tiny text-to-image model (``models/tiny-sd``) from scratch on the synthetic world.

CLI (wired by the lead): ``dynagen train tiny-model``. Manual: ``python -m jobs.train_tiny_model --minutes 40``.
"""

from __future__ import annotations

import argparse
import json
import os


def run(out_dir: str = "models/tiny-sd", minutes: float = 40.0, seed: int = 0, n_images: int = 8_000,
        batch_size: int = 32, fp16: bool = False, threads: int = 1,
        init_from: str | None = None, vae_from: str | None = None, latent_cache: str | None = None,
        vae_fraction: float = 0.2, vae_init_from: str | None = None) -> dict:
    """Train and save; returns the training summary (final_loss, unet_steps, params, size_bytes, ...).

    ``threads``: torch intra-op threads. 1 is the default because on a shared 2-core machine 2 threads ran ~4x
    slower (OpenMP spinning while other processes held the cores); use 2 on an idle machine.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dynagen.tinymodel import train

    return train(out_dir, minutes=minutes, seed=seed, n_images=n_images, batch_size=batch_size, fp16=fp16,
                 threads=threads, init_from=init_from, vae_from=vae_from,
                 latent_cache=latent_cache, vae_fraction=vae_fraction, vae_init_from=vae_init_from)


def evaluate(model_dir: str = "models/tiny-sd", sheet: str | None = "docs/tiny-sd-contact-sheet.png",
             n_prompts: int = 16, ssim_prompts: int = 16, seed: int = 0, threads: int = 1) -> dict:
    """Contact sheet at 50 DDIM steps + convergence table: mean SSIM(N-step image, 200-step image), same seed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import random

    import numpy as np
    import torch

    from dynagen import synth, tinymodel

    torch.set_num_threads(threads)
    pipe = tinymodel.load_pipeline(model_dir)
    rng = random.Random(seed)
    sheet_scenes = [synth.sample_scene(rng) for _ in range(n_prompts)]  # == synth.example_prompts(n_prompts, seed)
    if sheet:
        tinymodel.contact_sheet(pipe, [synth.caption(s) for s in sheet_scenes], sheet, steps=50, seed=seed,
                                references=[synth.render(s) for s in sheet_scenes])
    # easy vs hard split by the grammar's difficulty heuristic
    rng = random.Random(seed + 1)
    scenes = [synth.sample_scene(rng) for _ in range(ssim_prompts)]
    caps = [synth.caption(s) for s in scenes]
    diffs = np.array([synth.difficulty(s) for s in scenes])
    table = tinymodel.convergence_table(pipe, caps, seed=seed)
    easy = diffs <= np.median(diffs)
    out = {"prompts": caps, "difficulty": diffs.tolist(), "ssim": table,
           "mean": {n: float(np.mean(v)) for n, v in table.items()},
           "mean_easy": {n: float(np.mean(np.array(v)[easy])) for n, v in table.items()},
           "mean_hard": {n: float(np.mean(np.array(v)[~easy])) for n, v in table.items()}}
    print("steps  mean   easy   hard")
    for n in table:
        print(f"{n:5d}  {out['mean'][n]:.3f}  {out['mean_easy'][n]:.3f}  {out['mean_hard'][n]:.3f}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", default="models/tiny-sd")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=8_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init-from", default=None, help="continue training from a saved tiny-sd folder")
    ap.add_argument("--vae-from", default=None, help="reuse the trained VAE of a saved tiny-sd folder (skip stage 1)")
    ap.add_argument("--latent-cache", default=None, help=".pt file of encoded latents for that VAE (reused if present)")
    ap.add_argument("--vae-fraction", type=float, default=0.2, help="share of --minutes spent on the VAE stage")
    ap.add_argument("--vae-init-from", default=None, help="start the VAE stage from a saved tiny-sd folder's VAE")
    ap.add_argument("--eval-only", action="store_true", help="only write the contact sheet + SSIM table for --out-dir")
    a = ap.parse_args(argv)
    if a.eval_only:
        return evaluate(a.out_dir, threads=a.threads)
    info = run(a.out_dir, a.minutes, a.seed, a.n_images, a.batch_size, a.fp16, a.threads, a.init_from, a.vae_from,
               a.latent_cache, vae_fraction=a.vae_fraction, vae_init_from=a.vae_init_from)
    print(json.dumps({k: v for k, v in info.items() if k != "loss_history"}, indent=1))
    return info


if __name__ == "__main__":
    main()
