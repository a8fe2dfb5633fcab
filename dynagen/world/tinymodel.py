"""The embedded tiny Stable-Diffusion-style text-to-image model ("tiny-sd").

Same component layout as SD 1.5 (``StableDiffusionPipeline``: CLIPTokenizer + CLIPTextModel + UNet2DConditionModel
+ AutoencoderKL + scheduler), only tiny, trained by the project itself on the synthetic world of
:mod:`dynagen.world.synth` (64x64 RGB images, 16x16x4 latents). The trained weights live in ``models/tiny-sd`` and load offline
with ``StableDiffusionPipeline.from_pretrained("models/tiny-sd")``.

* :func:`build_pipeline` -- the same architecture, random init, from configs only (fast tests).
* :func:`train` -- VAE stage, then UNet + text encoder stage (10% caption dropout for classifier-free guidance),
  saved with ``save_pretrained`` (safetensors).

Tokenizer: a real ``CLIPTokenizer`` (byte-level BPE, ``</w>`` end-of-word suffix, lower-casing, 77 tokens) whose
vocabulary is the 512 byte symbols plus one merge chain per grammar word, so every grammar word is a single token and
any other text (unknown words, unicode, emoji) falls back to byte tokens -- it never errors and stays tiny.
Prediction type is ``v_prediction``; schedules use ``timestep_spacing="trailing"``.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: Default classifier-free guidance scale for this model (SD's 7.5 over-saturates a model this small).
DEFAULT_GUIDANCE_SCALE = 4.0
#: Native resolution.
IMAGE_SIZE = 64
DEFAULT_MODEL_DIR = "models/tiny-sd"

TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=128,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
    mid_block_add_attention=False,
    scaling_factor=1.0,  # replaced by 1/std(latents) after the VAE stage
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=2,  # diffusers' legacy name: the number of heads
    norm_num_groups=16,
    # Pooled text -> time embedding (a global conditioning path, as in UnCLIP/Kandinsky). The cross-attention-only model
    # had not learned to use the text after ~1000 steps; this path learns global attributes (colours) fast.
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
)
#: Token-embedding init std (CLIP's default 0.02 equals the position embeddings' and makes captions look alike).
TOKEN_EMBED_STD = 0.1
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


# ----------------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode symbol table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tokenizer_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE vocab + merges: 512 byte symbols, a merge chain per grammar word, the two special tokens."""
    from dynagen.world.synth import VOCABULARY

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted(VOCABULARY):
        parts = list(word)
        parts[-1] += "</w>"
        cur = parts[0]
        for p in parts[1:]:
            new = cur + p
            if new not in vocab:
                merges.append((cur, p))
                vocab[new] = len(vocab)
            cur = new
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tokenizer():
    """The tiny-sd CLIPTokenizer, written to a temp dir and loaded with ``from_pretrained`` (the robust path)."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_vocab()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=77)
    return tok


# ----------------------------------------------------------------------------------------------- pipeline


def build_components(seed: int = 0) -> dict:
    """Random-init components (same architecture as the trained model)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    vocab = tok.get_vocab()
    torch.manual_seed(seed)
    text_cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        **TEXT_CONFIG,
    )
    text_encoder = CLIPTextModel(text_cfg).eval()
    with torch.no_grad():  # token identity should dominate the (equally tiny) position embeddings: see train()
        text_encoder.get_input_embeddings().weight.normal_(0.0, TOKEN_EMBED_STD)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    return dict(tokenizer=tok, text_encoder=text_encoder, vae=vae, unet=unet, scheduler=scheduler)


def assemble(components: dict):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(seed: int = 0):
    """A random-init ``StableDiffusionPipeline`` with the tiny-sd architecture (no files needed). Fast: for tests."""
    return assemble(build_components(seed))


def load_pipeline(path: str | os.PathLike = DEFAULT_MODEL_DIR, dtype: torch.dtype = torch.float32):
    """The trained model (offline)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def param_counts(pipe) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")
    }


# ----------------------------------------------------------------------------------------------- training


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
    from dynagen.world import synth

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
    from dynagen.world import synth

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
    budget = minutes * 60 - (time.time() - t_start)
    t0, step, avg, history = time.time(), 0, None, []
    last_ckpt = time.time()
    out_dir = Path(out_dir)
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0:
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


# ----------------------------------------------------------------------------------------------- evaluation


def generate(pipe, prompts: list[str], steps: int, seed: int = 0, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
             scheduler: str | None = None) -> list[np.ndarray]:
    """Generate one image per prompt (seed ``seed + i`` for prompt i); uint8 arrays. ``scheduler``: ddim|euler|dpm."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if scheduler is not None:
        cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}[scheduler]
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens, output_type="np")
    return [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out.images]


def contact_sheet(pipe, prompts: list[str], path: str | os.PathLike, steps: int = 50, seed: int = 0,
                  guidance_scale: float = DEFAULT_GUIDANCE_SCALE, cols: int = 4, scale: int = 3,
                  with_reference: bool = True, references: list | None = None, images: list | None = None) -> None:
    """Save a grid: per prompt the generated image (and the rendered ground truth for reference) + caption.
    ``images``: already generated ones (same prompts, steps and seed), so a caller that scores them does not
    generate them twice."""
    import textwrap

    from PIL import Image, ImageDraw

    from dynagen.world import synth

    imgs = images if images is not None else generate(pipe, prompts, steps, seed, guidance_scale)
    cell = IMAGE_SIZE * scale
    tile_w = cell * (2 if with_reference else 1) + 8
    text_h = 44
    rows = math.ceil(len(prompts) / cols)
    sheet = Image.new("RGB", (cols * tile_w, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    refs = {}
    if with_reference:  # ground-truth renders of the same captions (fresh scenes; jitter differs)
        if references is not None:
            refs = dict(zip(prompts, references))
        else:
            rng = random.Random(12345)
            want = set(prompts)
            for _ in range(50_000):
                sc = synth.sample_scene(rng)
                c = synth.caption(sc)
                if c in want and c not in refs:
                    refs[c] = synth.render(sc, IMAGE_SIZE)
                    if len(refs) == len(want):
                        break
    for i, (p, im) in enumerate(zip(prompts, imgs)):
        x, y = (i % cols) * tile_w, (i // cols) * (cell + text_h)
        sheet.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (x, y))
        if with_reference and p in refs:
            sheet.paste(refs[p].resize((cell, cell), Image.NEAREST), (x + cell, y))
        draw.text((x + 2, y + cell + 2), "\n".join(textwrap.wrap(p, width=tile_w // 6)[:3]), fill=(0, 0, 0))
    sheet.save(path)


def position_of(image: np.ndarray, background: str) -> str:
    """The named position (synth.POSITIONS) nearest the centroid of the pixels that are not the background."""
    from dynagen.world import synth

    im = np.asarray(image, dtype=float)
    fg = np.linalg.norm(im - np.asarray(synth.BACKGROUNDS[background], dtype=float), axis=-1) > 60
    if fg.sum() < 5:
        return "none"
    ys, xs = np.nonzero(fg)
    cx, cy = xs.mean() / im.shape[1], ys.mean() / im.shape[0]
    return min(synth.POSITIONS, key=lambda k: (synth.POSITIONS[k][0] - cx) ** 2 + (synth.POSITIONS[k][1] - cy) ** 2)


def convergence_table(pipe, prompts: list[str], steps=(4, 8, 12, 16, 20, 30, 50, 75, 100), ref_steps: int = 200,
                      seed: int = 0, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, scheduler: str = "ddim") -> dict:
    """Per-prompt SSIM between the N-step image and the ``ref_steps`` image (same seed). Returns {N: [ssim...]}."""
    from skimage.metrics import structural_similarity

    ref = generate(pipe, prompts, ref_steps, seed, guidance_scale, scheduler)
    table = {}
    for n in steps:
        imgs = generate(pipe, prompts, n, seed, guidance_scale, scheduler)
        table[n] = [float(structural_similarity(a, b, channel_axis=2, data_range=255)) for a, b in zip(imgs, ref)]
    return table
