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
at a 10-step and a 100-step budget (a step of a short schedule covers more time, so x̂0 moves more per step). A sample
stops at a check where ``rate < threshold``, once it has run at least ``min_steps`` steps. Cost: a norm over a
4×16×16 latent per check, nothing next to a UNet call.

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

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

# Calibrated by jobs/calibrate_early_stop.py: the largest threshold keeping mean SSIM to the 200-step reference ≥ the
# fixed-50 level (0.9976 on 32 prompts × 2 seeds). On tiny-sd that bar leaves almost no room: 0.4 already stops 2% of
# samples and loses 1e-4 SSIM, 0.5 stops 45% at 43 mean steps (0.9927). So the default rarely stops; lower the bar
# (e.g. 1.0 → 24 mean steps, SSIM 0.961) to trade quality for steps. ImageSettings carries the same default (tested).
DEFAULT_THRESHOLD = 0.3
DEFAULT_INTERVAL = 2  # compare x̂0 two steps apart: one step of a long schedule moves x̂0 by little more than noise
DEFAULT_MIN_STEPS = 6  # before this x̂0 is a blurry mean and can sit still by chance; StepSaver's smallest grid counts
# Scheduler classes whose per-sample state this loop handles (see the module docstring).
SUPPORTED_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")
_EPS = 1e-8


class EarlyStopError(ValueError):
    """Early stopping cannot run with these settings (unsupported scheduler, bad threshold); one line for the user."""


@dataclass(frozen=True)
class EarlyStopConfig:
    """When a sample may leave: ``rate < threshold`` at a check every ``interval`` steps, after ``min_steps``."""

    threshold: float = DEFAULT_THRESHOLD
    interval: int = DEFAULT_INTERVAL
    min_steps: int = DEFAULT_MIN_STEPS

    def __post_init__(self):
        if not self.threshold >= 0:
            raise EarlyStopError(f"early-stop threshold must be ≥ 0, got {self.threshold}")
        if self.interval < 1 or self.min_steps < 1:
            raise EarlyStopError(
                f"early-stop interval and min_steps must be ≥ 1, got {self.interval}, {self.min_steps}"
            )


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
    for step, rate in checks:
        if step >= min_steps and rate < threshold:
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


# 2. The sampler ----------------------------------------------------------------------------------------------


class EarlyStopSampler:
    """Text-to-image sampling with a per-sample done state, on a diffusers ``StableDiffusionPipeline``'s parts."""

    def __init__(self, pipe, config: EarlyStopConfig | None = None):
        check_scheduler(pipe.scheduler)
        self.pipe = pipe
        self.config = config or EarlyStopConfig()

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str] | None, cfg: bool):
        """(B, L, D) cond and uncond embeddings, once per batch (the pipeline's own encoder call)."""
        cond, uncond = self.pipe.encode_prompt(
            prompts, self.pipe._execution_device, 1, cfg, negative_prompts
        )
        return cond, uncond

    def prepare_latents(self, n: int, generators: list, dtype):
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return self.pipe.prepare_latents(
            n, self.pipe.unet.config.in_channels, size, size, dtype, self.pipe._execution_device, generators, None
        )

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

    def decode(self, latents, generators: list | None = None) -> np.ndarray:
        """Latents (B, C, h, w) → float images (B, H, W, 3) in [0, 1], as the pipeline decodes them."""
        import torch

        with torch.inference_mode():
            image = self.pipe.vae.decode(
                latents / self.pipe.vae.config.scaling_factor, return_dict=False, generator=generators
            )[0]
            keep_colours = [True] * image.shape[0]  # no safety checker: every image is denormalized
            return self.pipe.image_processor.postprocess(image, output_type="np", do_denormalize=keep_colours)

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
            cond, uncond = self.encode_prompt(list(prompts), list(negative_prompts) if negative_prompts else None, cfg)
            # 2. Timesteps (this also resets the scheduler's step index and history)
            sched.set_timesteps(int(steps), device=pipe._execution_device)
            timesteps = sched.timesteps
            # 3. Initial noise, per-sample generators: same seed ⇒ same noise at any batch composition
            latents = self.prepare_latents(n, generators, cond.dtype)
            extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
            # 4. Denoise; `active` maps the rows of `latents` to batch indices
            active = torch.arange(n)
            final = [None] * n
            steps_run = [len(timesteps)] * n
            stopped = [False] * n
            x0_prev, t_prev, evals = None, None, 0
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
                if on_check is not None:
                    on_check(CheckTrace(step=i + 1, rows=a, rate=rate.cpu().numpy(), x0=x0.clone()))
                done = (rate < cfgs.threshold) & torch.tensor(i + 1 >= cfgs.min_steps)
                for r in torch.nonzero(done).flatten().tolist():
                    final[a[r]], steps_run[a[r]], stopped[a[r]] = x0[r], i + 1, True
                keep = ~done
                active, latents, x0_prev, t_prev = active[keep], latents[keep], x0[keep], t
                if bool(done.any()):
                    keep_scheduler_rows(sched, keep)
                if len(active) == 0:
                    break
            # 6. Samples that ran the whole budget end on their final latent, exactly as in the pipeline
            for r, j in enumerate(active.tolist()):
                final[j] = latents[r]
            # 7. Decode all together in batch order (the pipeline decodes one batch too)
            images = self.decode(torch.stack(final), generators)
        return EarlyStopOutput(images=images, steps_run=steps_run, stopped_early=stopped, unet_evals=evals)
