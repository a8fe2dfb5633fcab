"""Train the embedded tiny-sd model (:mod:`dynagen.world.tinymodel`) from scratch on the synthetic world.

Stage 1 trains the VAE on freshly rendered images; stage 2 encodes a fixed set of renders once and trains the UNet
(and optionally the text encoder) on v-prediction with min-SNR weighting, caption dropout for classifier-free guidance,
a cosine learning rate and EMA weights, saving an EMA checkpoint every ``checkpoint_every_s`` so an interrupted run
resumes with ``init_from``. ``dynagen train tiny-model`` / ``python -m jobs.train_tiny_model`` run it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynagen.world import synth
from dynagen.world.tinymodel import DEFAULT_GUIDANCE_SCALE, DEFAULT_MODEL_DIR, IMAGE_SIZE, SCHEDULER_CONFIG, assemble, build_components, load_pipeline


def _log(msg: str) -> None:
    print(f"[tiny-sd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_at(frac: float, base: float, warm: float = 0.03) -> float:
    if frac < warm:
        return base * max(frac / warm, 0.02)
    f = (frac - warm) / max(1e-9, 1 - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))


def train_vae(vae, minutes: float, seed: int, batch_size: int = 32, lr: float = 2e-3, kl_weight: float = 1e-4,
              log_every: int = 25, crop: int = 32) -> float:
    """Stage 1: autoencoder on freshly rendered images (L1 + MSE + small KL). Returns the final loss."""
    vae.train()
    rng = random.Random(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    t0, step, avg = time.time(), 0, None
    budget = minutes * 60
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(frac, lr)
        imgs, _, _ = synth.render_batch(batch_size, seed * 1_000_003 + 7 + step)
        x = _to_tensor(imgs)
        if crop:  # fully convolutional (no attention): random crops train it at a fraction of the cost
            i, j = rng.randrange(0, IMAGE_SIZE - crop + 1, 4), rng.randrange(0, IMAGE_SIZE - crop + 1, 4)
            x = x[:, :, i:i + crop, j:j + crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % log_every == 0:
            _log(f"vae step {step} loss {avg:.4f} (kl {kl.item():.3f}) {time.time() - t0:.0f}s")
    vae.eval()
    _log(f"vae done: {step} steps, loss {avg:.4f}")
    return float(avg)


@torch.no_grad()
def encode_dataset(vae, tokenizer, n: int, seed: int, batch: int = 256):
    """Render ``n`` samples, encode them to latent means (unscaled) and token ids."""
    lats, ids, caps = [], [], []
    for i in range(0, n, batch):
        imgs, c, _ = synth.render_batch(min(batch, n - i), seed * 7_919 + 1_000_000 + i)
        lats.append(vae.encode(_to_tensor(imgs)).latent_dist.mean)
        caps += c
    ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return torch.cat(lats), ids, caps


def train(out_dir: str | os.PathLike = DEFAULT_MODEL_DIR, minutes: float = 40.0, seed: int = 0, *,
          vae_fraction: float = 0.2, n_images: int = 8_000, batch_size: int = 32, lr: float = 1e-3,
          caption_dropout: float = 0.1, ema_decay: float = 0.995, min_snr_gamma: float = 5.0,
          log_every: int = 50, threads: int = 1, fp16: bool = False, checkpoint_every_s: float = 600.0,
          init_from: str | os.PathLike | None = None, vae_from: str | os.PathLike | None = None,
          te_lr_mult: float = 0.0, latent_cache: str | os.PathLike | None = None,
          vae_init_from: str | os.PathLike | None = None) -> dict:
    """Train tiny-sd from scratch within ``minutes`` of wall time and save it with ``save_pretrained(out_dir)``.

    Stage 1 (``vae_fraction`` of the time): the VAE. Then ``n_images`` renders are encoded once; the latent scaling
    factor is set to 1/std. Stage 2 (the rest, minus encoding): UNet + text encoder jointly on v-prediction with
    min-SNR weighting, 10% empty-caption dropout (for CFG), cosine LR, EMA weights (saved).
    ``init_from``: continue from a saved tiny-sd folder (its VAE is kept frozen: no VAE stage).
    ``vae_from``: take the (trained) VAE, with its scaling factor, from a saved tiny-sd folder and skip the VAE stage.
    ``vae_init_from``: start the VAE stage from that folder's VAE instead of random weights (the UNet still starts
    from scratch, since a retrained VAE has a new latent space).
    ``latent_cache``: a .pt file holding the encoded dataset of that VAE (written if missing, reused if present).
    ``te_lr_mult``: text-encoder LR relative to the UNet's; 0 (default) keeps the random-init text encoder frozen.
    Trained jointly from scratch, the text encoder collapsed within a few hundred steps to a caption-independent output
    (cosine 0.9994 between the embeddings of different captions) and the UNet ignored the text; frozen random features
    keep captions distinguishable and the UNet learns to read them.
    """
    import copy

    if vae_init_from is not None and (init_from is not None or vae_from is not None):
        raise ValueError("vae_init_from trains the VAE stage, which init_from/vae_from skip: give only one of them")
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    t_start = time.time()
    comps = build_components(seed)
    vae, unet, te, tok, sched = comps["vae"], comps["unet"], comps["text_encoder"], comps["tokenizer"], comps["scheduler"]
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in (("unet", unet), ("vae", vae), ("text_encoder", te))}
    _log(f"params {counts}; budget {minutes} min")

    if init_from is not None:
        prev = load_pipeline(init_from)
        vae, unet, te = prev.vae.eval(), prev.unet, prev.text_encoder
        comps = dict(comps, vae=vae, unet=unet, text_encoder=te)
        vae_loss = float("nan")
        _log(f"continuing from {init_from}")
    elif vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(vae_from), subfolder="vae", local_files_only=True).eval()
        comps = dict(comps, vae=vae)
        vae_loss = float("nan")
        _log(f"VAE from {vae_from} (scaling_factor {vae.config.scaling_factor:.4f})")
    else:
        if vae_init_from is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(str(vae_init_from), subfolder="vae", local_files_only=True)
            vae.register_to_config(scaling_factor=1.0)
            comps = dict(comps, vae=vae)
            _log(f"VAE stage continues from {vae_init_from}")
        vae_loss = train_vae(vae, minutes * vae_fraction, seed)
    t_enc = time.time()
    if latent_cache is not None and Path(latent_cache).exists():
        lat, ids = (torch.load(latent_cache)[k] for k in ("lat", "ids"))
        n_images = len(lat)
        _log(f"latents from {latent_cache}")
    else:
        lat, ids, caps = encode_dataset(vae, tok, n_images, seed)
        if latent_cache is not None:
            torch.save({"lat": lat, "ids": ids}, latent_cache)
    std = lat.std().item()
    scaling = 1.0 / std if (init_from is None and vae_from is None) else float(vae.config.scaling_factor)
    vae.register_to_config(scaling_factor=scaling)
    lat = lat * scaling
    empty_ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids[0]
    _log(f"encoded {n_images} images in {time.time() - t_enc:.0f}s; latent mean {lat.mean():.3f} std {std:.3f} "
         f"-> scaling_factor {scaling:.4f}")

    # Stage 2 -----------------------------------------------------------------------------------------------
    unet.train()
    train_te = te_lr_mult > 0
    te.train(train_te)
    te.requires_grad_(train_te)
    groups = [{"params": list(unet.parameters()), "mult": 1.0}]
    if train_te:
        groups.append({"params": list(te.parameters()), "mult": te_lr_mult, "weight_decay": 0.0})
    params = [p for g_ in groups for p in g_["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    for p in list(ema_unet.parameters()) + list(ema_te.parameters()):
        p.requires_grad_(False)
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    g = torch.Generator().manual_seed(seed)
    # What the VAE stage and encoding left of the budget; a spent budget still trains one step (a negative budget
    # once made the loop below run forever).
    budget = max(1e-6, minutes * 60 - (time.time() - t_start))
    t0, step, avg, history = time.time(), 0, None, []
    last_ckpt = time.time()
    out_dir = Path(out_dir)
    while True:
        frac = min(1.0, (time.time() - t0) / budget)
        if frac >= 1.0 and step > 0:
            break
        for gr in opt.param_groups:
            gr["lr"] = _lr_at(frac, lr) * gr["mult"]
        idx = torch.randint(0, n_images, (batch_size,), generator=g)
        x0 = lat[idx]
        tid = ids[idx].clone()
        drop = torch.rand(batch_size, generator=g) < caption_dropout
        tid[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        with torch.set_grad_enabled(train_te):
            cond = te(tid)[0]
        pred = unet(xt, t, cond).sample
        w = torch.clamp(snr[t], max=min_snr_gamma) / (snr[t] + 1)  # min-SNR-gamma for v-prediction
        loss = (w * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m_ema, m in ((ema_unet, unet), (ema_te, te)) if train_te else ((ema_unet, unet),):
                for pe, p in zip(m_ema.parameters(), m.parameters()):
                    pe.mul_(d).add_(p.detach(), alpha=1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % log_every == 0:
            history.append((step, round(avg, 5)))
            _log(f"unet step {step} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                 f"{time.time() - t0:.0f}s/{budget:.0f}s")
        if checkpoint_every_s and time.time() - last_ckpt > checkpoint_every_s:
            assemble(dict(comps, unet=ema_unet, text_encoder=ema_te)).save_pretrained(str(out_dir), safe_serialization=True)
            last_ckpt = time.time()
            _log(f"checkpoint (EMA) saved to {out_dir} at step {step}")
    _log(f"unet done: {step} steps, loss {avg:.4f}")

    comps = dict(comps, unet=ema_unet, text_encoder=ema_te)
    pipe = assemble(comps)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    info = {
        "final_loss": float(avg),
        "vae_loss": vae_loss,
        "unet_steps": step,
        "batch_size": batch_size,
        "n_images": n_images,
        "lr": lr,
        "te_lr_mult": te_lr_mult,
        "vae_from": str(vae_from) if vae_from else None,
        "vae_init_from": str(vae_init_from) if vae_init_from else None,
        "vae_fraction": vae_fraction if vae_from is None and init_from is None else 0.0,
        "init_from": str(init_from) if init_from else None,
        "minutes": minutes,
        "train_seconds": round(time.time() - t_start, 1),
        "seed": seed,
        "scaling_factor": scaling,
        "params": counts,
        "default_guidance_scale": DEFAULT_GUIDANCE_SCALE,
        "prediction_type": SCHEDULER_CONFIG["prediction_type"],
        "loss_history": history,
    }
    with open(out_dir / "dynagen_train.json", "w") as f:
        json.dump(info, f, indent=1)
    # Per-model defaults the diffusion actor applies (actors.diffusion.model_defaults).
    (out_dir / "dynagen.json").write_text(json.dumps({"guidance_scale": DEFAULT_GUIDANCE_SCALE}))
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    info["size_bytes"] = size
    _log(f"saved to {out_dir} ({size / 1e6:.1f} MB) in {info['train_seconds']:.0f}s total")
    return info
