"""Every diffusers family through the diffusion core (no Ray): loading, the family's sampler and defaults, dtypes,
SDPA, and the one-line refusals. Tiny random pipelines from the ``family_models`` fixture."""

import json
import re
import shutil

import numpy as np
import pytest

from actors.diffusion import DiffusionCore, ModelLoadError, check_model_dir
from dynagen.core.records import FAILED

# family → (pipeline class, sampler 'auto' picks, its diffusers class, the pipeline's own guidance, CFG doubles evals)
EXPECTED = {
    "sd": ("StableDiffusionPipeline", "ddim", "DDIMScheduler", 7.5, True),
    "sdxl": ("StableDiffusionXLPipeline", "euler", "EulerDiscreteScheduler", 5.0, True),
    "sd3": ("StableDiffusion3Pipeline", "flow-euler", "FlowMatchEulerDiscreteScheduler", 7.0, True),
    "flux": ("FluxPipeline", "flow-euler", "FlowMatchEulerDiscreteScheduler", 3.5, False),  # guidance-distilled
    "pixart-sigma": ("PixArtSigmaPipeline", "dpm++", "DPMSolverMultistepScheduler", 4.5, True),
    "sana": ("SanaPipeline", "flow-euler", "FlowMatchEulerDiscreteScheduler", 4.5, True),
}
FAMILIES = list(EXPECTED)
# The centre 2×2 pixels (RGB) of "a red circle", seed 0, 2 steps, at each family's default sampler and guidance: a
# silent change of sampler, guidance, size or conditioning fails here (diffusers' expected_slice habit).
EXPECTED_PIXELS = {
    "sd": [160, 176, 92, 162, 186, 105, 66, 42, 187, 90, 106, 193],
    "sdxl": [134, 145, 162, 115, 127, 209, 144, 121, 87, 88, 121, 142],
    "sd3": [84, 163, 178, 105, 171, 156, 158, 127, 161, 205, 139, 215],
    "flux": [142, 112, 76, 126, 166, 120, 124, 102, 85, 42, 136, 118],
    "pixart-sigma": [60, 17, 152, 150, 29, 162, 52, 132, 157, 59, 96, 212],
    "sana": [115, 181, 146, 84, 149, 125, 97, 160, 142, 101, 125, 137],
}
NOT_SD = [f for f in FAMILIES if f != "sd"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_with_its_sampler_and_defaults_and_generates(family_models, family):
    cls, sampler, sched_cls, guidance, cfg = EXPECTED[family]
    assert check_model_dir(family_models[family]).pipeline_class == cls
    core = DiffusionCore(family_models[family], batch_size=2, num_threads=1)
    assert core.family.name == family and core.scheduler == sampler and core.dtype == "float32"  # CPU default
    assert type(core.pipe.scheduler).__name__ == sched_cls and core.guidance_scale == guidance
    size = 64 if family == "sd" else 32  # sd: the embedded tiny-sd architecture; flux's from its dynagen.json
    assert (core.height, core.width) == (size, size)
    both = core.generate(["a red circle", "a blue square"], [1, 2], steps=2)
    assert both.shape == (2, size, size, 3) and both.dtype == np.uint8
    assert core.counter.evals == 2 * 2 * (2 if cfg else 1)  # the denoiser's evaluations, measured by its hook
    alone = core.generate(["a blue square"], [2], steps=2)
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 2  # same seed ⇒ same image at any batch size
    assert np.abs(both[0].astype(int) - both[1].astype(int)).max() > 2


@pytest.mark.parametrize("family", FAMILIES)
def test_pinned_pixels(family_models, family):
    img = DiffusionCore(family_models[family], batch_size=1, num_threads=1).generate(["a red circle"], [0], steps=2)[0]
    h = img.shape[0] // 2
    got = img[h - 1:h + 1, h - 1:h + 1].reshape(-1).astype(int)
    assert np.abs(got - np.array(EXPECTED_PIXELS[family])).max() <= 3, got.tolist()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_in_half_precision(family_models, family, dtype):
    import torch

    core = DiffusionCore(family_models[family], batch_size=1, num_threads=1, dtype=dtype)
    assert core.pipe.dtype == getattr(torch, dtype) and core.dtype == dtype
    img = core.generate(["a red circle"], [0], steps=2)
    assert img.shape[0] == 1 and img.std() > 0  # not a blank (NaN → 0) image


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_sdpa_by_default(family_models, family, monkeypatch):
    """diffusers' default attention processors on torch 2 call scaled_dot_product_attention (Sana's self-attention is
    linear by design; its cross-attention is SDPA)."""
    import torch.nn.functional as F

    core = DiffusionCore(family_models[family], batch_size=1, num_threads=1)
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    core.generate(["a red circle"], [0], steps=1)
    assert calls


@pytest.mark.parametrize("family", NOT_SD)
@pytest.mark.parametrize("feature, kwargs", [
    ("early stopping", {"early_stop": True}), ("adaptive steps", {"adaptive": True}),
    ("continuous batching", {"batching": "continuous"}),
])
def test_per_sample_features_are_refused_in_one_line(family_models, family, feature, kwargs):
    from actors.families import family_of

    label = family_of(EXPECTED[family][0]).label
    with pytest.raises(ModelLoadError, match=rf"^.*: {feature} not supported for {label}: .*UNet") as e:
        DiffusionCore(family_models[family], num_threads=1, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family, scheduler", [("flux", "ddim"), ("sd3", "euler"), ("sana", "dpm++"), ("sd", "flow-euler")])
def test_a_sampler_the_family_does_not_take_is_refused(family_models, family, scheduler):
    with pytest.raises(ModelLoadError, match=rf"models run with .*; scheduler '{re.escape(scheduler)}' is not one of them"):
        DiffusionCore(family_models[family], scheduler, num_threads=1)


@pytest.mark.parametrize("family, scheduler, cls", [("sdxl", "ddim", "DDIMScheduler"),
                                                    ("pixart-sigma", "euler", "EulerDiscreteScheduler")])
def test_other_samplers_of_a_family(family_models, family, scheduler, cls):
    core = DiffusionCore(family_models[family], scheduler, batch_size=1, num_threads=1)
    assert type(core.pipe.scheduler).__name__ == cls and core.generate(["x"], [0], steps=2).shape[0] == 1


def test_flux_fails_a_row_with_a_negative_prompt_and_runs_the_rest(family_models):
    core = DiffusionCore(family_models["flux"], batch_size=4, num_threads=1)
    rows = {"id": ["a", "b"], "prompt": ["a cat", "a dog"], "negative_prompt": ["", "blurry"], "seed": [0, 1],
            "steps": [2, 2], "status": ["ok", "ok"], "error": ["", ""]}
    out = core.run(rows)
    assert out["status"] == ["ok", FAILED] and out["error"][1] == "FLUX models take no negative prompt"
    assert out["image"][0][:4] == b"\x89PNG" and out["image"][1] == b"" and out["unet_evals"][0] == 2


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "pixart-sigma", "sana"])
def test_negative_prompts_change_the_image(family_models, family):
    core = DiffusionCore(family_models[family], batch_size=1, num_threads=1)
    plain = core.generate(["a cat"], [0], steps=2)
    neg = core.generate(["a cat"], [0], steps=2, negative_prompts=["blurry dog"])
    assert np.abs(plain.astype(int) - neg.astype(int)).max() > 2


def test_folder_checked_against_its_pipeline_class(family_models, tmp_path):
    """SDXL's second text encoder is a component its class takes (the hand-kept SD-1.x list refused it); a component
    the class needs but the folder lacks, and a pipeline that is not text-to-image, are refused in one line."""
    assert check_model_dir(family_models["sdxl"]).family.name == "sdxl"
    missing = tmp_path / "missing"
    shutil.copytree(family_models["sdxl"], missing)
    index = json.loads((missing / "model_index.json").read_text())
    del index["vae"]
    (missing / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="StableDiffusionXLPipeline needs component 'vae', which "
                                             "model_index.json does not list"):
        check_model_dir(missing)
    img2img = tmp_path / "img2img"
    shutil.copytree(family_models["sd"], img2img)
    index = json.loads((img2img / "model_index.json").read_text())
    (img2img / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))
    with pytest.raises(ModelLoadError, match="StableDiffusionImg2ImgPipeline is not a text-to-image pipeline"):
        check_model_dir(img2img)
    index["_class_name"] = "NoSuchPipeline"
    (img2img / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="names pipeline class 'NoSuchPipeline', which diffusers .* does not know"):
        check_model_dir(img2img)


def test_sd3_without_t5(family_models, tmp_path):
    """SD3 may drop its T5 encoder (null in model_index.json, passed as None to the loader)."""
    no_t5 = tmp_path / "sd3-no-t5"
    shutil.copytree(family_models["sd3"], no_t5)
    shutil.rmtree(no_t5 / "text_encoder_3")
    shutil.rmtree(no_t5 / "tokenizer_3")
    index = json.loads((no_t5 / "model_index.json").read_text())
    index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    (no_t5 / "model_index.json").write_text(json.dumps(index))
    core = DiffusionCore(str(no_t5), batch_size=1, num_threads=1)
    assert core.pipe.text_encoder_3 is None and core.generate(["a cat"], [0], steps=2).shape == (1, 32, 32, 3)


def test_hub_id_from_the_local_cache_only(family_models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snap = cache / "models--tiny--flux" / "snapshots" / "0123abcd"
    shutil.copytree(family_models["flux"], snap)
    (cache / "models--tiny--flux" / "refs").mkdir()
    (cache / "models--tiny--flux" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    info = check_model_dir("tiny/flux")
    assert info.path == snap and info.family.name == "flux"
    core = DiffusionCore("tiny/flux", batch_size=1, num_threads=1)
    assert core.model == "tiny/flux" and core.generate(["x"], [0], steps=1).shape == (1, 32, 32, 3)
    with pytest.raises(ModelLoadError, match=rf"^model folder not found: tiny/sdxl, and no hub id 'tiny/sdxl' in "
                                             rf"the local Hugging Face cache {cache} \(offline"):
        check_model_dir("tiny/sdxl")


def test_vae_slicing_and_tiling_keep_small_images(family_models):
    plain = DiffusionCore(family_models["sd"], batch_size=2, num_threads=1).generate(["a", "b"], [0, 1], steps=2)
    core = DiffusionCore(family_models["sd"], batch_size=2, num_threads=1, vae_slicing=True, vae_tiling=True)
    assert core.pipe.vae.use_slicing and core.pipe.vae.use_tiling
    sliced = core.generate(["a", "b"], [0, 1], steps=2)  # images under the tile size are decoded whole
    assert np.abs(plain.astype(int) - sliced.astype(int)).max() <= 2


def test_compile_wraps_the_denoiser_forward_and_evals_still_count(family_models, monkeypatch):
    """Wiring only: a real torch.compile (inductor) costs minutes on 2 CPU cores and is meant for GPUs."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    core = DiffusionCore(family_models["sana"], batch_size=1, num_threads=1, compile=True)
    assert len(compiled) == 1 and compiled[0].__self__ is core.pipe.transformer
    core.generate(["x"], [0], steps=2)
    assert core.counter.evals == 2 * 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kwargs", [{"early_stop": True}, {"adaptive": True}, {"batching": "continuous"}],
                         ids=["early_stop", "adaptive", "continuous"])
def test_sd_per_sample_features_in_half_precision(family_models, dtype, kwargs):
    """The SD samplers dynagen steps itself take half precision too (numpy sees float32, timesteps stay exact)."""
    core = DiffusionCore(family_models["sd"], "ddim", batch_size=2, num_threads=1, dtype=dtype,
                         early_stop_signal=None, **kwargs)
    rows = {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "negative_prompt": [""] * 3, "seed": [0, 1, 2],
            "steps": [4, 6, 4], "status": ["ok"] * 3, "error": [""] * 3}
    out = core.run(rows)
    assert out["status"] == ["ok"] * 3, out["error"]


def test_sd15_layout_with_a_safety_checker_is_accepted(family_models, tmp_path):
    """SD 1.5's folders list the safety checker under a diffusers pipeline module ('stable_diffusion'); it is a
    component the class takes, checked for weights, and never loaded (passed as None)."""
    sd15 = tmp_path / "sd15"
    shutil.copytree(family_models["sd"], sd15)
    index = json.loads((sd15 / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (sd15 / "model_index.json").write_text(json.dumps(index))
    (sd15 / "safety_checker").mkdir()
    with pytest.raises(ModelLoadError, match="safety_checker/config.json is missing"):
        check_model_dir(sd15)
    (sd15 / "safety_checker" / "config.json").write_text("{}")
    (sd15 / "safety_checker" / "model.safetensors").write_bytes(b"not read")
    assert check_model_dir(sd15).pipeline_class == "StableDiffusionPipeline"
    core = DiffusionCore(str(sd15), batch_size=1, num_threads=1)
    assert core.pipe.safety_checker is None and core.generate(["x"], [0], steps=1).shape == (1, 64, 64, 3)


def test_per_sample_features_refuse_a_size_other_than_the_unets(family_models, tmp_path):
    sized = tmp_path / "sd-48"
    shutil.copytree(family_models["sd"], sized)
    (sized / "dynagen.json").write_text(json.dumps({"height": 48, "width": 48}))
    assert DiffusionCore(str(sized), batch_size=1, num_threads=1).generate(["x"], [0], steps=1).shape == (1, 48, 48, 3)
    with pytest.raises(ModelLoadError, match="generate at the UNet's 64×64; dynagen.json asks 48×48"):
        DiffusionCore(str(sized), num_threads=1, adaptive=True)
