"""The embedded tiny Stable-Diffusion-style text-to-image model ("tiny-sd").

Same component layout as SD 1.5 (``StableDiffusionPipeline``: CLIPTokenizer + CLIPTextModel + UNet2DConditionModel
+ AutoencoderKL + scheduler), only tiny, trained by the project itself on the synthetic world of
:mod:`dynagen.world.synth` (64x64 RGB images, 16x16x4 latents). The trained weights live in ``models/tiny-sd`` and load offline
with ``StableDiffusionPipeline.from_pretrained("models/tiny-sd")``.

* :func:`build_pipeline` -- the same architecture, random init, from configs only (fast tests).
* Training (VAE stage, then UNet + text encoder stage with 10% caption dropout for classifier-free guidance, saved
  with ``save_pretrained``) lives with the project's other training code: ``pipelines/training/tiny_model.py``.

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

import numpy as np
import torch

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
