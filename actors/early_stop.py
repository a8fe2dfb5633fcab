"""Per-sample early stopping: end each image's denoising once its own predicted clean latent x̂0 stops changing.

StepSaver picks a step budget per prompt; the seed, which it cannot see, explains much of the rest. This sampler runs
a batch at one budget, watches every sample's x̂0 and lets a converged sample leave the batch: it returns its current
x̂0 (decoded by the VAE) and the UNet batch shrinks, so the saved steps are saved compute.

The loop mirrors ``StableDiffusionPipeline.__call__`` (same prompt encoding, latents, CFG, scheduler calls and
decoding), so with stopping disabled (threshold 0) it gives the pipeline's images: the tests check it against
``DiffusionCore.generate``.

Convergence signal, per sample, every ``interval`` steps::

    rate = (‖x̂0_now − x̂0_prev‖ / ‖x̂0_now‖) / ((t_prev − t_now) / num_train_timesteps)

the relative change of x̂0 per unit of diffusion time. Dividing by the time covered makes one threshold mean the same
at a 10-step and a 100-step budget (a step of a short schedule covers more time, so x̂0 moves more per step). Cost: a
norm over a 4×16×16 latent per check, nothing next to a UNet call. Two stop rules read it, once a sample has run at
least ``min_steps`` steps:

* **rate** (``threshold``): stop where ``rate < threshold``. One number, hand-calibrated.
* **learned** (:class:`LearnedSignal`): a logistic model, fitted on calibration trajectories by
  ``pipelines/training/early_stop.py``, of "would this sample's current x̂0 already pass the quality criterion?" from the
  rate, the previous check's rate, the noise level, the share of the budget run and the budget. Stop where its
  probability ≥ ``level``. The budget (StepSaver's prediction) carries what the prompt says; the trajectory carries
  what the seed did, which no prompt-only predictor can see.

Schedulers. All samples of a batch sit at the same timestep, so scheduler state that depends only on the step index
(timesteps, sigmas, ``step_index``) is shared; only state holding per-sample tensors must follow the samples.

* DDIM and Euler are single-step: a sample's whole state is its latent. ``scheduler.step`` is called on the active
  subset (not a hand-written DDIM update), so the update is diffusers' own and the threshold-0 output is bit-for-bit
  the pipeline's. x̂0 is the step output's ``pred_original_sample``.
* DPM-Solver++ (multistep, ``algorithm_type="dpmsolver++"``) keeps a history of data predictions
  (``scheduler.model_outputs``, batch-shaped); when samples leave, every history tensor is cut to the staying rows,
  so each sample keeps its own history. Its newest history entry is x̂0.
* Anything else (UniPC, PNDM, SDE variants drawing batch-shaped noise) is refused with :class:`EarlyStopError`:
  their per-sample state is not handled here. Run those without ``--early-stop``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# The rate rule's threshold, calibrated by jobs/calibrate_early_stop.py on tiny-sd (240 rows × budgets 20-75): the
# largest whose replayed mean SSIM loss vs running the budget out stays ≤ 0.001 on held-out prompts (0.3: loss 0.0007,
# 3% fewer steps). The learned signal is the default rule (images.early_stop_signal). ImageSettings carries the same
# default (tested).
DEFAULT_THRESHOLD = 0.3
DEFAULT_INTERVAL = 2  # compare x̂0 two steps apart: one step of a long schedule moves x̂0 by little more than noise
DEFAULT_MIN_STEPS = 6  # before this x̂0 is a blurry mean and can sit still by chance; StepSaver's smallest grid counts
# Scheduler classes whose per-sample state this loop handles (see the module docstring).
SUPPORTED_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")
_EPS = 1e-8


SIGNAL_FILE = "signal.json"
SIGNAL_FORMAT = "dynagen-early-stop-signal/1"
_RATE_FLOOR = 1e-3  # log(rate) below this is noise: x̂0 moves by less than float error per unit time


class EarlyStopError(ValueError):
    """Early stopping cannot run with these settings (unsupported scheduler, bad threshold); one line for the user."""


# Names of the learned signal's inputs, in order (signal_features builds them; the artifact records them).
SIGNAL_FEATURES = ("log_rate", "log_rate_prev", "t", "budget_share", "log_budget")


def signal_features(step, budget, t, rate, rate_prev, num_train_timesteps: int) -> np.ndarray:
    """(n, 5) inputs of the learned signal for n checks (arrays or scalars; NaN previous rate → the current one)."""
    step, budget, t = (np.broadcast_to(np.asarray(v, dtype=float), np.shape(rate)) for v in (step, budget, t))
    rate = np.asarray(rate, dtype=float)
    prev = np.where(np.isnan(np.asarray(rate_prev, dtype=float)), rate, rate_prev)
    return np.stack([np.log(np.maximum(rate, _RATE_FLOOR)), np.log(np.maximum(prev, _RATE_FLOOR)),
                     t / num_train_timesteps, step / budget, np.log(budget)], axis=-1)


@dataclass(frozen=True)
class LearnedSignal:
    """P(the current x̂0 already passes the criterion) = σ(w·standardised features + b); stop where P ≥ ``level``."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    level: float  # the calibrated stopping probability (jobs/calibrate_early_stop.py)
    meta: dict = field(default_factory=dict, compare=False)  # criterion, model fingerprint, training figures

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=float) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_json(self) -> dict:
        return {"format": SIGNAL_FORMAT, "features": list(SIGNAL_FEATURES), "weights": list(self.weights),
                "bias": self.bias, "mean": list(self.mean), "scale": list(self.scale), "level": self.level, **self.meta}

    def save(self, folder) -> Path:
        path = Path(folder) / SIGNAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder) -> "LearnedSignal":
        path = Path(folder) / SIGNAL_FILE if Path(folder).is_dir() else Path(folder)
        if not path.is_file():
            raise EarlyStopError(f"no learned early-stop signal at {path}: run `python -m jobs.calibrate_early_stop` "
                                 "or use images.early_stop_signal=rate")
        d = json.loads(path.read_text())
        if d.get("format") != SIGNAL_FORMAT or tuple(d.get("features", ())) != SIGNAL_FEATURES:
            raise EarlyStopError(f"{path} is not a {SIGNAL_FORMAT} file with features {', '.join(SIGNAL_FEATURES)}")
        keys = ("format", "features", "weights", "bias", "mean", "scale", "level")
        return cls(tuple(d["weights"]), float(d["bias"]), tuple(d["mean"]), tuple(d["scale"]), float(d["level"]),
                   {k: v for k, v in d.items() if k not in keys})


@dataclass(frozen=True)
class EarlyStopConfig:
    """When a sample may leave, checked every ``interval`` steps after ``min_steps``: ``rate < threshold``, or with a
    learned ``signal`` its probability ≥ ``level`` (the signal's calibrated level when None)."""

    threshold: float = DEFAULT_THRESHOLD
    interval: int = DEFAULT_INTERVAL
    min_steps: int = DEFAULT_MIN_STEPS
    signal: LearnedSignal | None = None
    level: float | None = None

    def __post_init__(self):
        if not self.threshold >= 0:
            raise EarlyStopError(f"early-stop threshold must be ≥ 0, got {self.threshold}")
        if self.interval < 1 or self.min_steps < 1:
            raise EarlyStopError(
                f"early-stop interval and min_steps must be ≥ 1, got {self.interval}, {self.min_steps}"
            )
        if self.level is not None and not 0 < self.level <= 1:
            raise EarlyStopError(f"early-stop level must be in (0, 1], got {self.level}")

    @property
    def stop_level(self) -> float:
        return self.level if self.level is not None else self.signal.level

    def stops(self, step: int, budget: int, t, rate: np.ndarray, rate_prev: np.ndarray, num_train_timesteps: int):
        """Boolean mask of the checked samples that leave now (NaN rate — the first check — never leaves)."""
        rate = np.asarray(rate, dtype=float)
        if step < self.min_steps:
            return np.zeros(rate.shape, dtype=bool)
        if self.signal is None:
            return rate < self.threshold
        p = self.signal.prob(signal_features(step, budget, float(t), rate, rate_prev, num_train_timesteps))
        return ~np.isnan(rate) & (p >= self.stop_level)


@dataclass
class EarlyStopOutput:
    """Images (float (B, H, W, 3) in [0, 1], like the pipeline's ``output_type="np"``) and per-sample facts."""

    images: np.ndarray
    steps_run: list[int]  # UNet steps each sample actually ran (≤ the budget)
    stopped_early: list[bool]
    unet_evals: int  # UNet sample-evaluations of this call (CFG counts 2 per sample-step)


@dataclass
class CheckTrace:
    """One convergence check (for calibration): which samples were checked, their rate and x̂0 at that step."""

    step: int  # steps run so far
    rows: list[int]  # indices into the batch
    rate: np.ndarray  # per row; NaN at the first check (nothing to compare with yet)
    x0: "object" = field(repr=False, default=None)  # torch.Tensor (len(rows), C, h, w)
    t: float = float("nan")  # the timestep just taken
    budget: int = 0
    rate_prev: np.ndarray | None = None  # per row, the previous check's rate (NaN where none)


# 1. Pure helpers ---------------------------------------------------------------------------------------------


def convergence_rate(x0_prev, x0_now, t_prev: float, t_now: float, num_train_timesteps: int):
    """Per-sample relative change of x̂0 per unit of diffusion time (tensors (B, ...) → (B,))."""
    dims = tuple(range(1, x0_now.ndim))
    rel = (x0_now - x0_prev).pow(2).sum(dims).sqrt() / (x0_now.pow(2).sum(dims).sqrt() + _EPS)
    return rel / max((float(t_prev) - float(t_now)) / num_train_timesteps, _EPS)


def is_check_step(steps_run: int, total: int, config: EarlyStopConfig) -> bool:
    """A check after ``steps_run`` steps: on the interval, and not after the last step (that image is final anyway)."""
    return steps_run % config.interval == 0 and steps_run < total


def first_stop(checks: Sequence[tuple[int, float]], threshold: float, min_steps: int) -> int | None:
    """The step at which a sample with these (steps run, rate) checks stops; None = it runs its whole budget.

    The sampler applies the same rule; calibration replays recorded checks with it to try many thresholds at once.
    """
    return first_pass([s for s, _ in checks], [r < threshold for _, r in checks], min_steps)


def first_pass(steps: Sequence[int], passes: Sequence[bool], min_steps: int) -> int | None:
    """The first check step ≥ ``min_steps`` whose ``passes`` is true (None: none) — the replay of any stop rule."""
    for step, ok in zip(steps, passes):
        if step >= min_steps and ok:
            return int(step)
    return None


def check_scheduler(scheduler) -> None:
    """Raise EarlyStopError unless this loop handles the scheduler's per-sample state."""
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise EarlyStopError(
            f"early stopping supports {', '.join(SUPPORTED_SCHEDULERS)}; {name} keeps per-sample state it does not "
            "handle: run without --early-stop"
        )
    if name == "DPMSolverMultistepScheduler" and scheduler.config.algorithm_type != "dpmsolver++":
        raise EarlyStopError(
            f"early stopping supports DPM-Solver only as algorithm_type='dpmsolver++' (its history holds x̂0), got "
            f"{scheduler.config.algorithm_type!r}: run without --early-stop"
        )


def predicted_x0(scheduler, step_output):
    """x̂0 of the step just taken: DDIM/Euler return it; DPM-Solver++'s newest history entry is the data prediction."""
    x0 = getattr(step_output, "pred_original_sample", None)
    return x0 if x0 is not None else scheduler.model_outputs[-1]


def keep_scheduler_rows(scheduler, keep) -> None:
    """Cut per-sample scheduler history (DPM-Solver++ ``model_outputs``) to the rows that stay in the batch."""
    history = getattr(scheduler, "model_outputs", None)
    if history is not None:
        scheduler.model_outputs = [m[keep] if m is not None else None for m in history]


# The pipeline's own calls for the parts of sampling a per-sample loop does not change (this sampler and
# actors/adaptive.py): prompt encoding, initial noise, decoding. Same inputs ⇒ the pipeline's tensors.


def encode_prompt(pipe, prompts: list[str], negative_prompts: list[str] | None, cfg: bool):
    """(B, L, D) cond and uncond embeddings, once per batch (the pipeline's own encoder call)."""
    return pipe.encode_prompt(prompts, pipe._execution_device, 1, cfg, negative_prompts)


def prepare_latents(pipe, n: int, generators: list, dtype):
    """Initial noise for ``n`` samples, one generator each: same seed ⇒ same noise at any batch composition."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe.prepare_latents(n, pipe.unet.config.in_channels, size, size, dtype, pipe._execution_device, generators,
                                None)


def decode_latents(pipe, latents, generators: list | None = None) -> np.ndarray:
    """Latents (B, C, h, w) → float images (B, H, W, 3) in [0, 1], as the pipeline decodes them."""
    import torch

    with torch.inference_mode():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
        keep_colours = [True] * image.shape[0]  # no safety checker: every image is denormalized
        return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=keep_colours)


# 2. The sampler ----------------------------------------------------------------------------------------------


class EarlyStopSampler:
    """Text-to-image sampling with a per-sample done state, on a diffusers ``StableDiffusionPipeline``'s parts."""

    def __init__(self, pipe, config: EarlyStopConfig | None = None):
        check_scheduler(pipe.scheduler)
        self.pipe = pipe
        self.config = config or EarlyStopConfig()

    def guided_prediction(self, latents, t, cond, uncond, guidance_scale: float):
        """UNet on the active samples only; with CFG the batch is [uncond; cond] of the active part (2×active)."""
        import torch

        cfg = uncond is not None
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = self.pipe.scheduler.scale_model_input(model_input, t)
        embeds = torch.cat([uncond, cond]) if cfg else cond
        pred = self.pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if not cfg:
            return pred
        pred_uncond, pred_text = pred.chunk(2)
        return pred_uncond + guidance_scale * (pred_text - pred_uncond)

    def __call__(
        self,
        prompts: Sequence[str],
        generators: list,
        steps: int,
        guidance_scale: float,
        negative_prompts: Sequence[str] | None = None,
        on_check: Callable[[CheckTrace], None] | None = None,
    ) -> EarlyStopOutput:
        """Sample ``prompts`` (one torch.Generator each) with budget ``steps``; converged samples leave early.

        ``on_check`` (calibration) sees every check: rows checked, their rate and x̂0.
        """
        import torch

        pipe, sched, cfgs = self.pipe, self.pipe.scheduler, self.config
        n = len(prompts)
        cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        with torch.inference_mode():
            # 1. Encode prompts once; later steps index the active rows
            cond, uncond = encode_prompt(pipe, list(prompts), list(negative_prompts) if negative_prompts else None, cfg)
            # 2. Timesteps (this also resets the scheduler's step index and history)
            sched.set_timesteps(int(steps), device=pipe._execution_device)
            timesteps = sched.timesteps
            # 3. Initial noise, per-sample generators: same seed ⇒ same noise at any batch composition
            latents = prepare_latents(pipe, n, generators, cond.dtype)
            extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
            # 4. Denoise; `active` maps the rows of `latents` to batch indices
            active = torch.arange(n)
            final = [None] * n
            steps_run = [len(timesteps)] * n
            stopped = [False] * n
            x0_prev, t_prev, evals = None, None, 0
            rate_prev = np.full(n, np.nan)  # per active row: its previous check's rate
            for i, t in enumerate(timesteps):
                a = active.tolist()
                noise_pred = self.guided_prediction(
                    latents, t, cond[active], uncond[active] if cfg else None, guidance_scale
                )
                evals += len(a) * (2 if cfg else 1)
                step_kwargs = dict(extra, generator=[generators[j] for j in a]) if "generator" in extra else extra
                out = sched.step(noise_pred, t, latents, **step_kwargs, return_dict=True)
                latents = out.prev_sample
                # 5. Convergence check: converged rows keep their x̂0 and leave the batch
                if not is_check_step(i + 1, len(timesteps), cfgs):
                    continue
                x0 = predicted_x0(sched, out)
                rate = (
                    convergence_rate(x0_prev, x0, t_prev, t, sched.config.num_train_timesteps)
                    if x0_prev is not None else torch.full((len(a),), float("nan"))
                )
                rate_np = rate.float().cpu().numpy().astype(float)  # numpy has no bfloat16
                if on_check is not None:
                    on_check(CheckTrace(step=i + 1, rows=a, rate=rate_np, x0=x0.clone(), t=float(t),
                                        budget=len(timesteps), rate_prev=rate_prev.copy()))
                done_np = cfgs.stops(i + 1, len(timesteps), float(t), rate_np, rate_prev,
                                     sched.config.num_train_timesteps)
                done = torch.from_numpy(done_np)
                for r in np.flatnonzero(done_np).tolist():
                    final[a[r]], steps_run[a[r]], stopped[a[r]] = x0[r], i + 1, True
                keep = ~done
                active, latents, x0_prev, t_prev = active[keep], latents[keep], x0[keep], t
                rate_prev = rate_np[~done_np]
                if bool(done.any()):
                    keep_scheduler_rows(sched, keep)
                if len(active) == 0:
                    break
            # 6. Samples that ran the whole budget end on their final latent, exactly as in the pipeline
            for r, j in enumerate(active.tolist()):
                final[j] = latents[r]
            # 7. Decode all together in batch order (the pipeline decodes one batch too)
            images = decode_latents(pipe, torch.stack(final), generators)
        return EarlyStopOutput(images=images, steps_run=steps_run, stopped_early=stopped, unet_evals=evals)
