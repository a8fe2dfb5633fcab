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
    from pipelines.training.tiny_model import train

    return train(out_dir, minutes=minutes, seed=seed, n_images=n_images, batch_size=batch_size, fp16=fp16,
                 threads=threads, init_from=init_from, vae_from=vae_from,
                 latent_cache=latent_cache, vae_fraction=vae_fraction, vae_init_from=vae_init_from)


def evaluate(model_dir: str = "models/tiny-sd", sheet: str | None = "docs/tiny-sd-contact-sheet.png",
             n_prompts: int = 16, ssim_prompts: int = 16, seed: int = 0, threads: int = 1) -> dict:
    """The model's check: a contact sheet (50 DDIM steps) of single objects at every named position, scored
    automatically (is the object where its caption says?), and the convergence table -- mean SSIM of the N-step
    image to the 200-step image, same seed, on the world's prompt mix -- which must rise with N (to within 0.002).
    Per-class minimum steps and the prompt's share of the step variance: ``python -m bench.world_probe``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import random

    import numpy as np
    import torch

    from dynagen.world import synth, tinymodel

    torch.set_num_threads(threads)
    pipe = tinymodel.load_pipeline(model_dir)
    rng = random.Random(seed)
    positions = list(synth.POSITIONS)
    sheet_scenes = []
    for i in range(n_prompts):  # full captions, positions cycled so each is asked about equally
        spec = synth.sample_spec(rng, "full")
        while spec.kind != "single":
            spec = synth.sample_spec(rng, "full")
        o = spec.objects[0]
        spec = synth.Spec("single", (synth.ObjSpec(o.shape, o.color, o.texture, o.size, positions[i % len(positions)]),),
                          background=spec.background)
        sheet_scenes.append(synth.scene_for(spec, rng))
    caps = [synth.caption(s) for s in sheet_scenes]
    imgs = tinymodel.generate(pipe, caps, 50, seed)
    found = [tinymodel.position_of(im, s.background) for im, s in zip(imgs, sheet_scenes)]
    pos_ok = sum(f == s.objects[0].position for f, s in zip(found, sheet_scenes))
    if sheet:
        tinymodel.contact_sheet(pipe, caps, sheet, steps=50, seed=seed, images=imgs,
                                references=[synth.render(s) for s in sheet_scenes])
    mix = synth.example_prompts(ssim_prompts, seed + 1)
    table = tinymodel.convergence_table(pipe, mix, seed=seed)
    mean = {n: float(np.mean(v)) for n, v in table.items()}
    means = list(mean.values())
    worst_drop = max([0.0] + [a - b for a, b in zip(means, means[1:])])
    out = {"positions_right": pos_ok, "positions_asked": n_prompts, "sheet_prompts": caps, "found": found,
           "prompts": mix, "ssim": table, "mean": mean, "worst_drop": worst_drop,
           "monotone_within_0.002": worst_drop <= 0.002}
    print(f"positions right: {pos_ok}/{n_prompts} (contact sheet, 50 steps)")
    print("steps  mean SSIM to the 200-step image")
    for n in table:
        print(f"{n:5d}  {mean[n]:.4f}")
    print(f"largest drop along the grid {worst_drop:.4f} (monotone within 0.002: {out['monotone_within_0.002']})")
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
