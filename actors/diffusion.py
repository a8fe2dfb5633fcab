"""Diffusion actor: a diffusers pipeline that runs rows in batches of one step count, or continuously batched.

``DiffusionCore`` is plain Python (no Ray): load once, then ``run(rows)`` groups the rows it is given by
step count, generates each group in batches of at most ``batch_size`` and returns PNG bytes per row. With
``batching="continuous"`` the rows instead share one active set of ``batch_size`` samples, each on its own step
count, a finished sample's slot refilled at the next UNet call (``actors/continuous.py``).
``DiffusionActor`` is the thin callable class Ray Data's ``map_batches`` holds in an actor pool.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from actors.families import AUTO, SCHEDULER_CLASSES, Family, check_features, default_dtype, family_of
from dynagen.core.errors import one_line, runtime_error
from dynagen.core.records import ERROR, FAILED
from dynagen.core.settings import BATCHING_NAMES, DTYPE_NAMES



class ModelLoadError(RuntimeError):
    """A model folder that is missing files, names components its pipeline does not take, or cannot be loaded."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".pth")
DTYPES = tuple(d for d in DTYPE_NAMES if d != AUTO)  # the settings' one list, "auto" resolved at load


@dataclass(frozen=True)
class ModelInfo:
    """What ``check_model_dir`` found: the folder, its pipeline class and family, the components listed as null."""

    path: Path
    pipeline_class: str
    family: Family
    null_components: tuple[str, ...]
    defaults: dict = field(default_factory=dict)  # dynagen.json beside model_index.json


# 1. Pure helpers ----------------------------------------------------------------------------------------


def plan_batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices grouped by key (first-seen order), each group cut into batches of at most ``batch_size``.

    Every batch holds a single key, so a batch never runs more steps than its rows need.
    """
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def resolve_model(model: str | Path) -> Path:
    """A model folder, or the snapshot folder of a hub id (``org/name``) in the local Hugging Face cache (offline:
    nothing is downloaded). Raises ModelLoadError naming the folder or the cache it looked in."""
    root = Path(model)
    if root.is_dir():
        return root
    text = str(model)
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        from huggingface_hub import constants, snapshot_download

        try:
            return Path(snapshot_download(text, local_files_only=True, cache_dir=constants.HF_HUB_CACHE))
        except Exception:  # not cached (LocalEntryNotFoundError), or a malformed id
            raise ModelLoadError(f"model folder not found: {text}, and no hub id {text!r} in the local Hugging Face "
                                 f"cache {constants.HF_HUB_CACHE} (offline: download it there first)") from None
    raise ModelLoadError(f"model folder not found: {root}")


def _library_class(library: str, name: str):
    """The class a ``model_index.json`` entry names: from its library (diffusers, transformers), or, as diffusers reads
    it, from a diffusers pipeline module (SD 1.5 lists its safety checker under ``stable_diffusion``)."""
    import importlib

    for module in (library, f"diffusers.pipelines.{library}"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is not None:
            return cls
    return None


def check_model_dir(path: str | Path, allow_unsafe: bool = False) -> ModelInfo:
    """Validate a diffusers folder (or a cached hub id) before loading, against its pipeline class's own components.

    The class named in ``model_index.json`` must be a text-to-image pipeline diffusers knows; every component the
    folder lists must be one the class takes, with a class its library knows; every component the class needs must
    be there (null only for the class's optional components or a family's documented drop, e.g. SD3 without T5);
    model components need weights. Pickle weights (.bin/.pt/.ckpt) are refused unless ``allow_unsafe``.
    """
    root = resolve_model(path)
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{root}: no model_index.json (not a diffusers pipeline folder)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index_file}: invalid JSON ({e.msg})") from None
    name = index.get("_class_name")
    import diffusers
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    cls = getattr(diffusers, str(name), None) if name else None
    if cls is None:
        raise ModelLoadError(f"{root}: model_index.json names pipeline class {name!r}, which diffusers "
                             f"{diffusers.__version__} does not know")
    if name not in {c.__name__ for c in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}:
        raise ModelLoadError(f"{root}: {name} is not a text-to-image pipeline")
    family = family_of(name)
    expected, _ = cls._get_signature_keys(cls)  # the components the class's __init__ takes
    may_be_null = set(cls._optional_components) | set(family.droppable)
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    listed = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    nulls = []
    for comp in sorted(expected):
        if comp not in listed:
            if comp in may_be_null:
                continue
            raise ModelLoadError(f"{root}: {name} needs component '{comp}', which model_index.json does not list")
        if listed[comp][-1] is None:
            if comp not in may_be_null:
                raise ModelLoadError(f"{root}: {name} needs component '{comp}', listed as null")
            nulls.append(comp)
    for comp, spec in listed.items():
        if comp not in expected:
            raise ModelLoadError(f"{root}: unknown component '{comp}' in model_index.json "
                                 f"({name} takes {', '.join(sorted(expected))})")
        if spec[-1] is None:
            continue
        library, cls_name = (spec + [None, None])[:2]
        comp_cls = _library_class(str(library), str(cls_name))
        if comp_cls is None:
            raise ModelLoadError(f"{root}: component '{comp}' has class {cls_name!r}, which {library} does not know")
        sub = root / comp
        if not sub.is_dir():
            raise ModelLoadError(f"{root}: component '{comp}' is listed but folder {comp}/ is missing")
        if isinstance(comp_cls, type) and issubclass(comp_cls, (ModelMixin, PreTrainedModel)):
            if not (sub / "config.json").is_file():
                raise ModelLoadError(f"{root}: {comp}/config.json is missing")
            if not list(sub.glob("*.safetensors")):
                pickles = [p.name for p in sub.iterdir() if p.suffix in WEIGHT_SUFFIXES]
                if pickles and not allow_unsafe:
                    raise ModelLoadError(
                        f"{root}: {comp}/ has only pickle weights ({pickles[0]}); safetensors required "
                        "(allow_unsafe to override for trusted folders)"
                    )
                if not pickles:
                    raise ModelLoadError(f"{root}: {comp}/ has no weights (*.safetensors)")
    return ModelInfo(root, name, family, tuple(nulls), model_defaults(root))


def check_model(model: str | Path, scheduler: str = AUTO, early_stop: bool = False, adaptive: bool = False,
                batching: str = "grouped", allow_unsafe: bool = False) -> ModelInfo:
    """``check_model_dir`` plus the family's refusals of the asked sampler and per-sample features: what the job
    and calibration check on the driver before starting anything. Raises ModelLoadError (one line)."""
    info = check_model_dir(model, allow_unsafe=allow_unsafe)
    try:
        check_features(info.family, scheduler, early_stop, adaptive, batching)
    except ValueError as e:
        raise ModelLoadError(f"{model}: {e}") from None
    sized = {k: v for k, v in info.defaults.items() if k in ("height", "width")}
    if (early_stop or adaptive or batching == "continuous") and sized:
        # The per-sample samplers (SD only) draw their noise at the UNet's own size.
        unet = json.loads((info.path / "unet" / "config.json").read_text())
        vae = json.loads((info.path / "vae" / "config.json").read_text())
        native = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        h, w = int(sized.get("height", sized.get("width"))), int(sized.get("width", sized.get("height")))
        if (h, w) != (native, native):
            raise ModelLoadError(f"{model}: early stopping, adaptive steps and continuous batching generate at the "
                                 f"UNet's {native}×{native}; dynagen.json asks {h}×{w}")
    return info


def model_defaults(path: str | Path) -> dict[str, Any]:
    """Optional per-model defaults (guidance_scale, height, width) from ``dynagen.json`` beside model_index.json."""
    f = Path(path) / "dynagen.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def make_scheduler(pipe, name: str):
    """The pipeline's scheduler as dynagen's sampler ``name``, built from the folder's scheduler config."""
    import diffusers

    if name == AUTO:  # a pipeline of no family of ours: its own scheduler
        return pipe.scheduler
    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    config = pipe.scheduler.config
    extra: dict[str, Any] = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    if name == "flow-euler" and not isinstance(pipe.scheduler, cls) and "flow_shift" in config:
        extra["shift"] = config["flow_shift"]  # a flow-matching DPM-Solver config (Sana ships one) names it so
    return cls.from_config(config, **extra)


def load_pipeline(path: str | Path, scheduler: str = AUTO, device: str = "cpu", allow_unsafe: bool = False,
                  dtype: str = AUTO, compile: bool = False, vae_slicing: bool = False, vae_tiling: bool = False,
                  info: ModelInfo | None = None):
    """Load a diffusers text-to-image pipeline from a local folder or cached hub id, offline, safetensors only unless
    ``allow_unsafe``, with the chosen sampler ('auto' = the family's), dtype ('auto' = by device and family), an
    optionally ``torch.compile``\\ d denoiser and VAE slicing/tiling. ``info``: the folder's ``check_model_dir``
    result when the caller already has it (the check is not repeated)."""
    import diffusers
    import torch

    info = info or check_model_dir(path, allow_unsafe=allow_unsafe)
    try:
        name = info.family.scheduler(scheduler)
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    dtype = default_dtype(info.family, device) if dtype == AUTO else dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    import transformers

    # Loading bars from every actor would drown the job's own progress output.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # Null components are passed as None: SD3 without T5 needs it said; the safety checker is never loaded.
    nulls = {c: None for c in info.null_components}
    if "safety_checker" in diffusers.DiffusionPipeline._get_signature_keys(getattr(diffusers, info.pipeline_class))[0]:
        nulls["safety_checker"] = None
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(info.path), local_files_only=True, use_safetensors=not allow_unsafe, dtype=getattr(torch, dtype),
            **nulls,
        )
    except Exception as e:  # diffusers raises many types; the user needs one line naming the folder
        raise ModelLoadError(f"{path}: failed to load pipeline: {one_line(e)}") from None
    pipe.scheduler = make_scheduler(pipe, name)
    pipe.set_progress_bar_config(disable=True)
    for on, what in ((vae_slicing, "slicing"), (vae_tiling, "tiling")):
        if on:
            if not hasattr(pipe.vae, f"enable_{what}"):
                raise ModelLoadError(f"{path}: its VAE ({type(pipe.vae).__name__}) has no {what}")
            getattr(pipe.vae, f"enable_{what}")()
    pipe = pipe.to(device)
    if compile:
        # The forward only: the module's __call__ (and so the evaluation counter's hook) stays eager.
        den = denoiser(pipe)
        den.forward = torch.compile(den.forward)
    return pipe


def denoiser(pipe):
    """The network a step evaluates: the UNet (SD, SDXL) or the transformer (SD3, FLUX, PixArt-Σ, Sana)."""
    den = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if den is None:
        raise ModelLoadError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return den


def resolution(pipe, defaults: dict) -> tuple[int, int]:
    """(height, width): dynagen.json's, else the denoiser's sample size × the VAE factor, else the pipeline's
    default sample size × the VAE factor (FLUX's config has no sample size)."""
    if "height" in defaults or "width" in defaults:
        h = int(defaults.get("height", defaults.get("width")))
        return h, int(defaults.get("width", h))
    sample = denoiser(pipe).config.get("sample_size") or getattr(pipe, "default_sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    if not sample:
        raise ModelLoadError(f"{type(pipe).__name__}: no sample size in its config; set height/width in dynagen.json")
    size = int(sample) * int(getattr(pipe, "vae_scale_factor", 8))
    return size, size


def _call_default(pipe, name: str, fallback: Any) -> Any:
    """The default of one of the pipeline's ``__call__`` arguments (diffusers' per-family defaults)."""
    import inspect

    p = inspect.signature(pipe.__call__).parameters.get(name)
    return fallback if p is None or p.default is inspect.Parameter.empty else p.default


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (the pipeline's ``output_type="np"``) → uint8, rounded as PNG encoders expect."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


class UNetCounter:
    """Counts denoiser evaluations per sample (a CFG batch of 2×B counts 2×B) via a forward hook: the UNet of SD/SDXL
    (called positionally) or the transformer of SD3/FLUX/PixArt-Σ/Sana (called with ``hidden_states=``)."""

    def __init__(self, module):
        self.evals = 0
        module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.evals += int(x.shape[0])


# 2. The core ----------------------------------------------------------------------------------------------


class DiffusionCore:
    """Holds one pipeline; generates rows grouped into single-step-count batches."""

    def __init__(
        self,
        model: str,
        scheduler: str = AUTO,
        guidance_scale: float | None = None,
        batch_size: int = 8,
        device: str | None = None,
        num_threads: int | None = None,
        allow_unsafe: bool = False,
        dtype: str = AUTO,
        compile: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        early_stop: bool = False,
        early_stop_threshold: float | None = None,
        early_stop_interval: int | None = None,
        early_stop_min_steps: int | None = None,
        early_stop_signal: str | None = None,
        early_stop_level: float | None = None,
        adaptive: bool = False,
        adaptive_tol: float | None = None,
        batching: str = "grouped",
    ):
        import torch

        if num_threads:
            # Ray gives an actor OMP_NUM_THREADS=1; use the CPUs the actor actually reserved.
            torch.set_num_threads(num_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = str(model)
        # The family's refusals first (one line, before the weights load): its samplers, the per-sample features.
        info = check_model(model, scheduler, early_stop, adaptive, batching, allow_unsafe=allow_unsafe)
        self.family = info.family
        self.scheduler = info.family.scheduler(scheduler)  # 'auto' resolved: what calibration labels record
        self.pipe = load_pipeline(model, scheduler, self.device, allow_unsafe=allow_unsafe, dtype=dtype, compile=compile,
                                  vae_slicing=vae_slicing, vae_tiling=vae_tiling, info=info)
        self.dtype = str(self.pipe.dtype).removeprefix("torch.")
        # Guidance: the flag, else the folder's dynagen.json, else the pipeline's own default (diffusers: 7.5 for SD,
        # 5.0 SDXL, 7.0 SD3, 3.5 FLUX, 4.5 PixArt-Σ and Sana).
        if guidance_scale is None:
            guidance_scale = info.defaults.get("guidance_scale", _call_default(self.pipe, "guidance_scale", 7.5))
        self.guidance_scale = float(guidance_scale)
        self.batch_size = batch_size
        self.counter = UNetCounter(denoiser(self.pipe))
        self.batches_run = 0
        self._tag = uuid.uuid4().hex[:8]
        self.height, self.width = resolution(self.pipe, info.defaults)
        self._call_kwargs = self._family_kwargs()
        # Per-sample early stopping (actors/early_stop.py): the step count becomes a budget. Built here so an
        # unsupported scheduler fails at load, not on the first batch.
        self.early_stop = None
        if early_stop:
            from actors.early_stop import EarlyStopConfig, EarlyStopSampler, LearnedSignal

            # A learned signal (a folder holding signal.json) replaces the rate threshold as the stop rule.
            signal = LearnedSignal.load(early_stop_signal) if early_stop_signal else None
            given = dict(threshold=early_stop_threshold, interval=early_stop_interval, min_steps=early_stop_min_steps,
                         signal=signal, level=early_stop_level)
            self.early_stop = EarlyStopSampler(self.pipe, EarlyStopConfig(**{k: v for k, v in given.items() if v is not None}))
        # Adaptive per-sample steps (actors/adaptive.py): the step count becomes each image's cap.
        self.adaptive = None
        self.sampler_name = self.scheduler  # what the metadata's scheduler column records
        if adaptive:
            from actors.adaptive import DEFAULT_TOL, AdaptiveError, AdaptiveSampler

            if early_stop:
                raise AdaptiveError("adaptive steps and early stopping are two per-sample rules: choose one")
            self.adaptive = AdaptiveSampler(self.pipe, tol=adaptive_tol if adaptive_tol is not None else DEFAULT_TOL)
            self.sampler_name = f"adaptive-dpm++2m(tol={self.adaptive.tol:g})"
        # Continuous batching (actors/continuous.py): rows of any step count share one active set.
        if batching not in BATCHING_NAMES:
            raise ValueError(f"unknown batching {batching!r} (choose from {', '.join(BATCHING_NAMES)})")
        self.continuous = None
        if batching == "continuous":
            from actors.continuous import ContinuousSampler

            self.continuous = ContinuousSampler(
                self.pipe, self.guidance_scale, max_batch=batch_size, adaptive=self.adaptive,
                early_stop=self.early_stop.config if self.early_stop is not None else None)

    def _family_kwargs(self) -> dict[str, Any]:
        """Fixed extra ``__call__`` arguments: the family's (PixArt-Σ/Sana: no resolution binning or caption
        cleaning) and SDXL's size/crop conditioning, said explicitly: generated at its own size, uncropped."""
        import inspect

        params = inspect.signature(self.pipe.__call__).parameters
        kw = {k: v for k, v in self.family.call_kwargs if k in params}
        if self.family.name == "sdxl":
            size = (self.height, self.width)
            kw.update(original_size=size, target_size=size, crops_coords_top_left=(0, 0))
        elif "use_resolution_binning" in params:  # another family's pipeline: our size, not its bins
            kw["use_resolution_binning"] = False
        return kw

    def generate(
        self, prompts: list[str], seeds: list[int], steps: int, negative_prompts: list[str] | None = None
    ) -> np.ndarray:
        """One batch at one step count → uint8 array (B, H, W, 3). Same seed ⇒ same image at any batch size
        (to within a level of 255: batched float math differs in the last bits)."""
        return self.generate_with_steps(prompts, seeds, steps, negative_prompts)[0]

    def generate_with_steps(
        self, prompts: list[str], seeds: list[int], steps: int | list[int], negative_prompts: list[str] | None = None
    ) -> tuple[np.ndarray, list[int], list[bool]]:
        """Like ``generate``, plus per image the steps actually run and whether it stopped early (or, with adaptive
        steps, took fewer than its cap). A list of per-image ``steps`` is for adaptive steps only."""
        import torch

        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        neg = negative_prompts if negative_prompts and any(negative_prompts) else None
        if neg is not None and not self.family.negative_prompt:
            raise ValueError(f"{self.family.label} models take no negative prompt")
        if self.adaptive is not None:  # ``steps``: one cap, or one per image
            caps = np.broadcast_to(np.asarray(steps, dtype=int), (len(prompts),))
            res = self.adaptive(prompts, gens, self.guidance_scale, neg, max_steps=caps)
            self.batches_run += 1
            return to_uint8(res.images), res.steps_run, [ran < cap for ran, cap in zip(res.steps_run, caps.tolist())]
        if self.early_stop is not None:
            res = self.early_stop(prompts, gens, int(steps), self.guidance_scale, neg)
            self.batches_run += 1
            return to_uint8(res.images), res.steps_run, res.stopped_early
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts),
                num_inference_steps=int(steps),
                guidance_scale=self.guidance_scale,
                generator=gens,
                height=self.height,
                width=self.width,
                output_type="np",
                **({"negative_prompt": neg} if neg is not None else {}),
                **self._call_kwargs,
            ).images
        out = out.astype(np.float32) if out.dtype != np.float32 else out  # bfloat16 pipelines return float16/32
        self.batches_run += 1
        return to_uint8(out), [int(steps)] * len(seeds), [False] * len(seeds)

    def run(self, rows: dict[str, list], on_batch=None) -> dict[str, list]:
        """Generate every row with status 'ok'; rows already failed pass through untouched.

        ``on_batch(out, idx, seconds)``, if given, is called after each batch (generated or failed) with the row
        indices it held and its time (None when rows did not run as one batch: continuous batching, a failed batch):
        the actor wrapper reports progress from it.

        ``rows`` has columns id, prompt, negative_prompt, seed, steps, status, error. Adds image (PNG bytes),
        width, height, batch_id, batch_size, latency_ms, unet_evals (measured per row), model, scheduler,
        planned_steps (the budget) and stopped_early; ``steps`` becomes the steps actually run.
        """
        n = len(rows["id"])
        out = {k: list(v) for k, v in rows.items()}
        out.update(
            image=[b""] * n, width=[self.width] * n, height=[self.height] * n, batch_id=[""] * n,
            batch_size=[0] * n, latency_ms=[0.0] * n, unet_evals=[0] * n, model=[self.model] * n, scheduler=[self.sampler_name] * n,
            planned_steps=[int(v) for v in rows["steps"]], stopped_early=[False] * n,
        )
        todo = [i for i in range(n) if out["status"][i] == "ok"]
        if not self.family.negative_prompt:  # the row asks what this model cannot do: failed, not silently dropped
            for i in todo:
                if out["negative_prompt"][i]:
                    out["status"][i] = FAILED
                    out["error"][i] = f"{self.family.label} models take no negative prompt"
            todo = [i for i in todo if out["status"][i] == "ok"]
        if self.continuous is not None:
            self._run_continuous(out, todo, on_batch)
            return out
        adaptive = self.adaptive is not None
        # Adaptive steps take each row's count as its own cap, so rows of any count share a batch (full batches);
        # otherwise a batch holds one step count.
        batches = ([list(range(s, min(s + self.batch_size, len(todo)))) for s in range(0, len(todo), self.batch_size)]
                   if adaptive else plan_batches([int(out["steps"][i]) for i in todo], self.batch_size))
        for batch in batches:
            idx = [todo[j] for j in batch]
            steps = [int(out["steps"][i]) for i in idx] if adaptive else int(out["steps"][idx[0]])
            batch_id = f"{self._tag}-{self.batches_run:06d}"
            t0, evals0 = time.perf_counter(), self.counter.evals
            try:
                images, steps_run, stopped = self.generate_with_steps(
                    [out["prompt"][i] for i in idx],
                    [int(out["seed"][i]) for i in idx],
                    steps,
                    [out["negative_prompt"][i] or "" for i in idx],
                )
            except Exception as e:  # record per row; the other batches still run
                msg = runtime_error(e)
                for i in idx:  # a good row the model could not finish: a rerun retries it
                    out["status"][i], out["error"][i] = ERROR, msg
                if on_batch is not None:
                    on_batch(out, idx, None)
                continue
            ms = (time.perf_counter() - t0) * 1000
            # Measured evals split by steps run: every sample-step costs the same (1, or 2 with CFG).
            evals_per_step = (self.counter.evals - evals0) // max(1, sum(steps_run))
            for img, i, ran, early in zip(images, idx, steps_run, stopped):
                out["image"][i] = encode_png(img)
                out["batch_id"][i], out["batch_size"][i], out["latency_ms"][i] = batch_id, len(idx), ms
                out["unet_evals"][i] = evals_per_step * ran
                out["steps"][i], out["stopped_early"][i] = ran, early
            if on_batch is not None:
                on_batch(out, idx, ms / 1000)
        return out

    def _run_continuous(self, out: dict[str, list], todo: list[int], on_batch=None) -> None:
        """``run`` for continuous batching: ``batch_id`` names the group a row joined the active set with, and
        ``batch_size`` is the mean active-set size over the row's UNet calls (how many samples shared them)."""
        from actors.continuous import Request

        reqs = [Request(i, out["prompt"][i], int(out["seed"][i]), int(out["steps"][i]), out["negative_prompt"][i] or "")
                for i in todo]
        finished: set[int] = set()

        def record(f) -> None:
            i = f.key
            out["image"][i] = encode_png(f.image)
            out["batch_id"][i] = f"{self._tag}-c{f.first_tick:06d}"
            out["batch_size"][i] = int(round(f.mean_active))
            out["latency_ms"][i], out["unet_evals"][i], out["steps"][i] = f.latency_s * 1000, f.unet_evals, f.steps
            out["stopped_early"][i] = f.steps < out["planned_steps"][i]  # fewer than its budget or cap
            finished.add(i)
            if on_batch is not None:  # samples share UNet calls: no batch time of its own
                on_batch(out, [i], None)

        try:
            self.continuous.run(reqs, on_finished=record)
        except Exception as e:  # rows already finished keep their images; the rest are retried by a rerun
            msg = runtime_error(e)
            for i in todo:
                if i not in finished:
                    out["status"][i], out["error"][i] = ERROR, msg
            if on_batch is not None:
                on_batch(out, [i for i in todo if i not in finished], None)
        self.batches_run += 1


# 3. The Ray Data wrapper ----------------------------------------------------------------------------------


class DiffusionActor:
    """Callable class for ``map_batches``: resources and pool size are set where the stage is wired."""

    def __init__(self, progress=None, **core_kwargs):
        self.core = DiffusionCore(**core_kwargs)
        self.progress = progress  # an actors.progress board handle, or None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {k: v.tolist() for k, v in batch.items()}
        if self.progress is not None:
            self._report_window(rows)
        out = self.core.run(rows, on_batch=self._report_batch if self.progress is not None else None)
        return {k: np.asarray(v, dtype=object) if k in ("image",) else np.asarray(v) for k, v in out.items()}

    def _report_window(self, rows: dict[str, list]) -> None:
        from actors.progress import report

        # Generation starts (the ETA's clock), and rows failed on input are done. Planned steps came from the step
        # stage; reported again here for rows it did not report (a first report per id stands).
        ok = [s == "ok" for s in rows["status"]]
        report(self.progress, "start")
        report(self.progress, "planned", rows["id"], [int(st) if good else 0 for st, good in zip(rows["steps"], ok)])
        bad = [i for i, good in zip(rows["id"], ok) if not good]
        if bad:
            report(self.progress, "done", bad, [False] * len(bad), [0] * len(bad))

    def _report_batch(self, out: dict[str, list], idx: list[int], seconds: float | None) -> None:
        from actors.progress import report

        if idx:
            report(self.progress, "done", [out["id"][i] for i in idx], [out["status"][i] == "ok" for i in idx],
                   [int(out["steps"][i]) for i in idx], seconds)
