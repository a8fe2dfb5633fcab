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
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from dynagen.core.errors import one_line, runtime_error
from dynagen.core.records import ERROR
from dynagen.core.settings import BATCHING_NAMES

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}
# diffusers/transformers classes a model folder may name; anything else is refused at load.
KNOWN_COMPONENTS = {
    "unet": {"UNet2DConditionModel"},
    "vae": {"AutoencoderKL", "AutoencoderTiny"},
    "text_encoder": {"CLIPTextModel", "BertModel", "CLIPTextModelWithProjection"},
    "tokenizer": {"CLIPTokenizer", "CLIPTokenizerFast", "BertTokenizer", "BertTokenizerFast", "PreTrainedTokenizerFast"},
    "scheduler": set(SCHEDULERS.values()) | {"PNDMScheduler", "DDPMScheduler", "LMSDiscreteScheduler"},
    "safety_checker": {None},
    "feature_extractor": {None},
    "image_encoder": {None},
}


class ModelLoadError(RuntimeError):
    """A model folder that is missing files or names unknown components."""


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


def check_model_dir(path: str | Path, allow_unsafe: bool = False) -> dict[str, Any]:
    """Validate a diffusers folder before loading: model_index.json, known classes, weights present.

    Returns the parsed model_index. Pickle weights (.bin/.pt/.ckpt) are refused unless ``allow_unsafe``.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model folder not found: {root}")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{root}: no model_index.json (not a diffusers pipeline folder)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index_file}: invalid JSON ({e.msg})") from None
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue  # private keys and plain config flags (save_pretrained writes requires_safety_checker: false)
        cls = spec[1] if isinstance(spec, list) and len(spec) == 2 else None
        if name not in KNOWN_COMPONENTS:
            raise ModelLoadError(f"{root}: unknown component '{name}' in model_index.json")
        if cls not in KNOWN_COMPONENTS[name]:
            raise ModelLoadError(f"{root}: component '{name}' has unsupported class {cls!r}")
        if cls is None:
            continue
        sub = root / name
        if not sub.is_dir():
            raise ModelLoadError(f"{root}: component '{name}' is listed but folder {name}/ is missing")
        if name in ("unet", "vae", "text_encoder"):
            if not (sub / "config.json").is_file():
                raise ModelLoadError(f"{root}: {name}/config.json is missing")
            if not list(sub.glob("*.safetensors")):
                pickles = [p.name for p in sub.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
                if pickles and not allow_unsafe:
                    raise ModelLoadError(
                        f"{root}: {name}/ has only pickle weights ({pickles[0]}); safetensors required "
                        "(allow_unsafe to override for trusted folders)"
                    )
                if not pickles:
                    raise ModelLoadError(f"{root}: {name}/ has no weights (*.safetensors)")
    return index


def model_defaults(path: str | Path) -> dict[str, Any]:
    """Optional per-model defaults (e.g. guidance_scale) from ``dynagen.json`` beside model_index.json."""
    f = Path(path) / "dynagen.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def load_pipeline(path: str | Path, scheduler: str = "ddim", device: str = "cpu", allow_unsafe: bool = False):
    """Load a diffusers text-to-image pipeline from a local folder, offline, with the chosen scheduler."""
    import diffusers

    if scheduler not in SCHEDULERS:
        raise ModelLoadError(f"unknown scheduler '{scheduler}' (choose from {', '.join(SCHEDULERS)})")
    check_model_dir(path, allow_unsafe=allow_unsafe)
    import transformers

    # Loading bars from every actor would drown the job's own progress output.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, use_safetensors=not allow_unsafe, safety_checker=None
        )
    except Exception as e:  # diffusers raises many types; the user needs one line naming the folder
        raise ModelLoadError(f"{path}: failed to load pipeline: {one_line(e)}") from None
    sched_cls = getattr(diffusers, SCHEDULERS[scheduler])
    extra = {"algorithm_type": "dpmsolver++"} if scheduler == "dpm++" else {}
    pipe.scheduler = sched_cls.from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (the pipeline's ``output_type="np"``) → uint8, rounded as PNG encoders expect."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


class UNetCounter:
    """Counts UNet evaluations per sample (a CFG batch of 2×B counts 2×B) via a forward hook."""

    def __init__(self, unet):
        self.evals = 0
        unet.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.evals += int(args[0].shape[0])


# 2. The core ----------------------------------------------------------------------------------------------


class DiffusionCore:
    """Holds one pipeline; generates rows grouped into single-step-count batches."""

    def __init__(
        self,
        model: str,
        scheduler: str = "ddim",
        guidance_scale: float | None = None,
        batch_size: int = 8,
        device: str | None = None,
        num_threads: int | None = None,
        allow_unsafe: bool = False,
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
        self.scheduler = scheduler
        self.pipe = load_pipeline(model, scheduler, self.device, allow_unsafe=allow_unsafe)
        self.guidance_scale = (
            guidance_scale if guidance_scale is not None else float(model_defaults(model).get("guidance_scale", 7.5))
        )
        self.batch_size = batch_size
        self.counter = UNetCounter(self.pipe.unet)
        self.batches_run = 0
        self._tag = uuid.uuid4().hex[:8]
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.height = self.width = int(size)
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
        self.sampler_name = scheduler  # what the metadata's scheduler column records
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
            if early_stop:
                raise ValueError("continuous batching does not combine with early stopping (use adaptive steps: "
                                 "a sample that settles leaves the active set)")
            from actors.continuous import ContinuousSampler

            self.continuous = ContinuousSampler(self.pipe, self.guidance_scale, max_batch=batch_size,
                                                adaptive=self.adaptive)

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
                negative_prompt=neg,
                num_inference_steps=int(steps),
                guidance_scale=self.guidance_scale,
                generator=gens,
                height=self.height,
                width=self.width,
                output_type="np",
            ).images
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
            out["stopped_early"][i] = f.steps < out["planned_steps"][i]  # adaptive steps: fewer than its cap
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
