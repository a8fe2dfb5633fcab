"""Tiny random pipelines of every diffusers family dynagen runs, built from configs offline (tests, bench/gpu.py).

``build_family(name, seed)`` returns a diffusers pipeline of that family's real classes with tiny random weights:
the same component names, ``model_index.json`` and loading path as the real checkpoint once saved with
``save_pretrained``, so the job loads it exactly like SDXL or FLUX weights. The configs follow diffusers' own fast
tests (``get_dummy_components`` in its ``tests/pipelines/*``). No hub: the CLIP tokenizer is the embedded tiny-sd
one (built from code), the T5 and Gemma tokenizers are tiny Unigram models trained here on a few sentences.

Each family renders 32×32 images (a ``dynagen.json`` beside ``model_index.json`` sets that size where the family's
config would give a larger default, FLUX's 128×VAE-factor) so a test runs a family end to end in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILY_NAMES = ("sd", "sdxl", "sd3", "flux", "pixart-sigma", "sana")
IMAGE_SIZE = 32
_CORPUS = [
    "a red circle on a blue background", "two green squares and a yellow triangle", "a photo of a cat",
    "an astronaut riding a horse", "a painting of a lighthouse at dawn", "one small orange star above a purple disk",
    "the quick brown fox jumps over the lazy dog", "a watercolor landscape with mountains and a lake",
]


def unigram_tokenizer(special: list[str], vocab_size: int = 120):
    """A tiny Unigram (SentencePiece-style) tokenizer trained offline on a few sentences; ``special`` get ids 0..n-1."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=special[-1],
                                      show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def t5_tokenizer(max_length: int = 32):
    """T5TokenizerFast over a tiny Unigram model: pad 0, eos 1, unk 2 as in T5; eos appended to every text."""
    from tokenizers import processors
    from transformers import T5TokenizerFast

    tok = unigram_tokenizer(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=max_length, extra_ids=0)


def gemma_tokenizer(max_length: int = 512):
    """A Gemma-style fast tokenizer (pad 0, eos 1, bos 2, unk 3) over a tiny Unigram model, for Sana's Gemma2."""
    from tokenizers import processors
    from transformers import GemmaTokenizerFast

    tok = unigram_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    return GemmaTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                              unk_token="<unk>", model_max_length=max_length)


def _clip_encoder(with_projection: bool, hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dynagen.world.tinymodel import build_tokenizer

    tok = build_tokenizer()
    vocab = tok.get_vocab()
    cfg = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"], hidden_size=hidden, intermediate_size=37, layer_norm_eps=1e-5,
                         num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu", projection_dim=projection,
                         max_position_embeddings=77)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval(), tok


def _t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval(), tok


def _kl_vae(blocks: int, latent_channels: int = 4, flow: bool = False):
    from diffusers import AutoencoderKL

    extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035) if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,) * blocks, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                         latent_channels=latent_channels, norm_num_groups=1, sample_size=IMAGE_SIZE, **extra).eval()


def _sd():
    from dynagen.world.tinymodel import build_pipeline

    return build_pipeline(seed=0), {}


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    te, tok = _clip_encoder(False)
    te2, tok2 = _clip_encoder(True)
    vae = _kl_vae(2)  # 32×32 images → 16×16 latents
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids + pooled
        cross_attention_dim=64, norm_num_groups=1,  # two CLIP encoders' hidden states side by side: 32 + 32
    ).eval()
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                   timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched)
    return pipe, {}


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    te, tok = _clip_encoder(True)
    te2, tok2 = _clip_encoder(True)
    te3, tok3 = _t5_encoder(32)
    transformer = SD3Transformer2DModel(sample_size=IMAGE_SIZE // 2, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_kl_vae(2, flow=True),
                                    text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
                                    text_encoder_3=te3, tokenizer_3=tok3)
    return pipe, {}


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    te, tok = _clip_encoder(False)
    te2, tok2 = _t5_encoder(32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    # One latent channel packed 2×2 into the transformer's 4; a 2-level VAE (factor 2).
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_kl_vae(2, 1, flow=True),
                        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2)
    # FLUX's transformer config has no sample size: the pipeline's default is 128 × the VAE factor (1024 on the real
    # model); the tiny one would render 256×256.
    return pipe, {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def _pixart_sigma():
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    te, tok = _t5_encoder(32)
    transformer = PixArtTransformer2DModel(
        sample_size=IMAGE_SIZE // 2, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()
    return PixArtSigmaPipeline(transformer=transformer, scheduler=DPMSolverMultistepScheduler(), vae=_kl_vae(2),
                               text_encoder=te, tokenizer=tok), {}


def _sana():
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer()
    te = Gemma2Model(Gemma2Config(head_dim=16, hidden_size=8, intermediate_size=64, max_position_embeddings=8192,
                                  num_attention_heads=2, num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tok),
                                  pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                                         attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                         cross_attention_dim=8, caption_channels=8, sample_size=IMAGE_SIZE // 2).eval()
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407).eval()
    return SanaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)), {}


_BUILDERS = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "pixart-sigma": _pixart_sigma, "sana": _sana}


def build_family(name: str, seed: int = 0):
    """(pipeline, dynagen.json defaults) for the family ``name`` (one of FAMILY_NAMES), random weights from ``seed``."""
    import torch

    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r} (choose from {', '.join(FAMILY_NAMES)})")
    torch.manual_seed(seed)
    pipe, defaults = _BUILDERS[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, defaults


def save_family(name: str, path: str | Path, seed: int = 0) -> str:
    """Build the family ``name`` and save it like real weights (safetensors) to ``path``; returns the folder."""
    pipe, defaults = build_family(name, seed)
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    if defaults:
        (path / "dynagen.json").write_text(json.dumps(defaults) + "\n")
    return str(path)
