"""The diffusers families dynagen runs, and which of its features each one supports. Pure: no torch at import.

A model folder's ``model_index.json`` names its pipeline class; the class names the family. What a pipeline *takes*
(its components) is diffusers' own knowledge (``actors/diffusion.check_model_dir`` asks the class); what is kept here
is only what dynagen does differently per family: which of its samplers fit the model, whether a negative prompt
means anything, the GPU dtype the family is published in, and whether the per-sample samplers (early stopping,
adaptive steps, continuous batching), which step an SD 1.x/2.x UNet themselves, can drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

# dynagen's sampler names → diffusers scheduler classes (settings.SCHEDULER_NAMES lists the same names plus "auto").
SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}
AUTO = "auto"  # the family's own default sampler

_UNET_SAMPLERS = ("actors/early_stop.py, actors/adaptive.py and actors/continuous.py step an SD 1.x/2.x UNet "
                  "(ε/v-prediction, text cross-attention only) themselves")


@dataclass(frozen=True)
class Family:
    """What dynagen does per family. ``schedulers[0]`` is what ``scheduler: auto`` picks."""

    name: str
    label: str
    pipelines: tuple[str, ...]
    schedulers: tuple[str, ...]
    negative_prompt: bool = True
    gpu_dtype: str = "float16"  # dtype "auto" on a GPU (CPU: float32)
    per_sample: str | None = None  # None: early stop, adaptive and continuous work; else why they are refused
    droppable: tuple[str, ...] = ()  # components a folder may list as null beyond the class's _optional_components
    call_kwargs: tuple[tuple[str, object], ...] = ()  # fixed extra __call__ arguments

    def scheduler(self, name: str) -> str:
        """The sampler ``name`` resolves to for this family ('auto' = its default); raises ValueError if refused."""
        if name == AUTO:  # a family with no samplers of ours (OTHER) keeps the folder's own: 'auto' stays
            return self.schedulers[0] if self.schedulers else AUTO
        if name not in self.schedulers:
            fits = ", ".join(self.schedulers) if self.schedulers else "only its own (scheduler: auto)"
            raise ValueError(f"{self.label} models run with {fits}; scheduler {name!r} is not one of them")
        return name


# The pipelines need their own size (resolution binning would move it) and no caption cleaning (bs4/ftfy).
_DIT_KWARGS = (("use_resolution_binning", False), ("clean_caption", False))
FAMILIES: tuple[Family, ...] = (
    Family("sd", "SD 1.x/2.x", ("StableDiffusionPipeline",), ("ddim", "euler", "dpm++")),
    Family("sdxl", "SDXL", ("StableDiffusionXLPipeline",), ("euler", "ddim", "dpm++"),
           per_sample=f"{_UNET_SAMPLERS}; SDXL's UNet also needs its added text/time conditioning"),
    Family("sd3", "SD3", ("StableDiffusion3Pipeline",), ("flow-euler",), gpu_dtype="bfloat16",
           per_sample=f"{_UNET_SAMPLERS}; SD3 is a flow-matching transformer",
           droppable=("text_encoder_3", "tokenizer_3")),  # SD3 without T5 (diffusers documents it)
    Family("flux", "FLUX", ("FluxPipeline",), ("flow-euler",), negative_prompt=False, gpu_dtype="bfloat16",
           per_sample=f"{_UNET_SAMPLERS}; FLUX is a flow-matching transformer"),
    Family("pixart-sigma", "PixArt-Σ", ("PixArtSigmaPipeline",), ("dpm++", "ddim", "euler"),
           per_sample=f"{_UNET_SAMPLERS}; PixArt-Σ is a DiT transformer", call_kwargs=_DIT_KWARGS),
    Family("sana", "Sana", ("SanaPipeline",), ("flow-euler",), gpu_dtype="bfloat16",
           per_sample=f"{_UNET_SAMPLERS}; Sana is a flow-matching linear-attention transformer", call_kwargs=_DIT_KWARGS),
)
# Any other text-to-image pipeline diffusers knows loads and runs through the generic path: its own scheduler, its
# own defaults, grouped batching only. Not tested per family.
OTHER = Family("other", "other text-to-image pipelines", (), (), per_sample=_UNET_SAMPLERS)


def family_of(pipeline_class: str) -> Family:
    """The family of a pipeline class name (``model_index.json``'s ``_class_name``); ``OTHER`` if not one of ours."""
    for f in FAMILIES:
        if pipeline_class in f.pipelines:
            return f
    return OTHER


def check_features(family: Family, scheduler: str = AUTO, early_stop: bool = False, adaptive: bool = False,
                   batching: str = "grouped") -> str:
    """The sampler name the family runs; raises ValueError with one line when a setting does not fit the family."""
    resolved = family.scheduler(scheduler)
    asked = [what for what, on in (("early stopping", early_stop), ("adaptive steps", adaptive),
                                   ("continuous batching", batching == "continuous")) if on]
    if asked and family.per_sample:
        raise ValueError(f"{' and '.join(asked)} not supported for {family.label}: {family.per_sample}; "
                         "run it with grouped batching (fixed or StepSaver steps)")
    return resolved


def default_dtype(family: Family, device: str) -> str:
    """float32 on CPU (float16/bfloat16 matmuls there are emulated or slower); the family's published dtype on GPU."""
    return "float32" if not str(device).startswith("cuda") else family.gpu_dtype
