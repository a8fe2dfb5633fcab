"""Per-sample adaptive step sizes: every image takes the steps its own trajectory needs, in one shared UNet batch.

A fixed step count spends the same steps on every sample, though the probability-flow ODE of one seed can be nearly
straight (its predicted clean image x̂0 settles early) while another's bends late (an object's place is decided at
low noise). This sampler integrates each sample's ODE with **its own step sizes**, chosen from its own trajectory:

* The solver is DPM-Solver++(2M) in data prediction (Lu et al. 2022), written for per-sample log-SNR λ. Its
  first-order part is exactly DDIM; the second-order part corrects with the change of x̂0 between steps.
* The **step size** comes from that same correction. The first-order step's local error is about
  ``α_next · (1 − e^{-h}) · h / (2 h_prev) · ‖x̂0 − x̂0_prev‖`` (the term 2M adds); each sample takes the largest
  ``h`` (in λ) whose estimate stays ≤ ``tol``. Where x̂0 has settled the steps grow; where it moves they shrink.
  No rejected steps, no extra UNet calls: the estimate reuses the history the solver keeps anyway.
* **One UNet call per tick** over every active sample, each at its own (continuous) timestep; a sample that reaches
  the end of the schedule leaves the batch. ``tol`` is the quality knob (smaller = more steps); ``max_steps`` caps
  a sample (its last step then goes straight to the end).

The schedule runs from the first to the last training timestep, as ``DDIMScheduler`` with ``timestep_spacing=
"trailing"`` and ``set_alpha_to_one=False`` does, so at small ``tol`` the images approach the many-step DDIM images
of the same seed. Works for ``epsilon`` and ``v_prediction`` models with CFG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOL = 0.01  # mean SSIM ≈ 0.99 to the 100-step image on tiny-sd: the quality of StepSaver's default risk
# The first step has no x̂0 history to size it: its λ span is FIRST_STEP_SCALE·√tol (≤ MAX_FIRST_STEP). It must shrink
# with tol: at high noise x̂0 moves fast (the layout is being decided), and a fixed large first step left every image
# ~0.5% SSIM away from the many-step image however small tol was (measured).
FIRST_STEP_SCALE = 2.0
MAX_FIRST_STEP = 0.6
MIN_STEP = 0.02  # smallest λ step: below this a step buys nothing measurable
MAX_GROWTH = 3.0  # a step at most this many times the previous one (the estimate extrapolates)
_EPS = 1e-12


class AdaptiveError(ValueError):
    """The adaptive sampler cannot run with these settings; one line for the user."""


@dataclass
class AdaptiveOutput:
    images: np.ndarray  # float (B, H, W, 3) in [0, 1]
    steps_run: list[int]  # UNet steps each sample took
    unet_evals: int  # UNet sample-evaluations (CFG counts 2 per sample-step)


class NoiseSchedule:
    """The model's discrete ᾱ_t as a continuous map between timestep t and log-SNR λ = log(α/σ)."""

    def __init__(self, alphas_cumprod):
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        self.lam_table = 0.5 * (np.log(ac) - np.log1p(-ac))  # decreasing in t
        self.t_table = np.arange(len(ac), dtype=np.float64)
        self.lam_start, self.lam_end = float(self.lam_table[-1]), float(self.lam_table[0])

    def t_of(self, lam: np.ndarray) -> np.ndarray:
        return np.interp(lam, self.lam_table[::-1], self.t_table[::-1])

    def snap(self, lam_now: np.ndarray, lam_next: np.ndarray) -> np.ndarray:
        """λ of the integer timestep nearest ``lam_next``, at least one timestep past ``lam_now``."""
        t_now = np.rint(self.t_of(lam_now))
        t = np.minimum(np.rint(self.t_of(lam_next)), t_now - 1)
        return np.where(t <= 0, self.lam_end, self.lam_table[np.clip(t, 0, None).astype(int)])

    @staticmethod
    def alpha(lam):
        return np.sqrt(1.0 / (1.0 + np.exp(-2.0 * np.asarray(lam))))

    @staticmethod
    def sigma(lam):
        return np.sqrt(1.0 / (1.0 + np.exp(2.0 * np.asarray(lam))))


def choose_step(lam: np.ndarray, h_prev: np.ndarray, dx0: np.ndarray, tol, lam_end: float,
                last: np.ndarray) -> np.ndarray:
    """Per sample the next λ step: the largest with estimated local error ≤ ``tol`` (see module docstring).

    ``dx0``: RMS of x̂0 − x̂0_prev; ``last``: samples whose next step must reach the end (their step cap).
    """
    a = NoiseSchedule.alpha(lam)
    # α (1 − e^{-h}) h / (2 h_prev) d ≈ α h² d / (2 h_prev) ≤ tol  →  h = sqrt(2 tol h_prev / (α d))
    h = np.sqrt(2.0 * tol * h_prev / np.maximum(a * dx0, _EPS))
    h = np.clip(h, MIN_STEP, MAX_GROWTH * h_prev)
    left = lam_end - lam
    # Close to the end: take the rest in one step rather than leave a sliver for another UNet call.
    h = np.where((h >= 0.6 * left) | last, left, h)
    return h


class AdaptiveSampler:
    """Text-to-image sampling with per-sample adaptive steps, on a diffusers ``StableDiffusionPipeline``'s parts."""

    def __init__(self, pipe, tol: float = DEFAULT_TOL, max_steps: int = 100):
        if not tol > 0:
            raise AdaptiveError(f"adaptive tolerance must be > 0, got {tol}")
        if max_steps < 2:
            raise AdaptiveError(f"adaptive max_steps must be ≥ 2, got {max_steps}")
        pred = pipe.scheduler.config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise AdaptiveError(f"adaptive steps support epsilon and v_prediction models, not {pred!r}")
        self.pipe, self.tol, self.max_steps = pipe, float(tol), int(max_steps)
        self.prediction_type = pred
        self.schedule = NoiseSchedule(pipe.scheduler.alphas_cumprod.numpy())

    def _x0(self, model_out, x, lam):
        import torch

        a = torch.as_tensor(NoiseSchedule.alpha(lam), dtype=x.dtype).view(-1, 1, 1, 1)
        s = torch.as_tensor(NoiseSchedule.sigma(lam), dtype=x.dtype).view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return a * x - s * model_out
        return (x - s * model_out) / a

    def timesteps(self, lam: np.ndarray) -> np.ndarray:
        """The UNet's (integer) timestep for each sample's λ."""
        return np.rint(self.schedule.t_of(lam))

    def finished(self, lam: np.ndarray) -> np.ndarray:
        """Which samples have reached the end of the schedule."""
        return lam >= self.schedule.lam_end - 1e-9

    def advance(self, model_out, x, lam, h_prev, x0_prev, steps, tol, cap):
        """One solver step for samples each at its own λ (all arguments aligned per sample: numpy arrays, or
        tensors for ``model_out``, ``x``, ``x0_prev``). Returns ``(x_next, x0, lam_next, h)``; a sample whose
        ``lam_next`` reached the schedule's end is finished. Used per tick by this sampler and by continuous
        batching (``actors/continuous.py``), so both take the same steps."""
        import torch

        sch = self.schedule

        def as_t(v):  # per-sample numpy scalars → a (B, 1, 1, 1) tensor that broadcasts over latents
            return torch.as_tensor(v, dtype=x.dtype).view(-1, 1, 1, 1)

        x0 = self._x0(model_out, x, lam)
        # Step size per sample from its own x̂0 change (the first step: a span set by its tolerance)
        first = steps == 0
        dx0 = (x0 - x0_prev).pow(2).mean(dim=(1, 2, 3)).sqrt().float().cpu().numpy()  # numpy: no bfloat16
        last = steps + 1 >= cap
        h = choose_step(lam, np.where(first, 1.0, h_prev), dx0, tol, sch.lam_end, last)
        h0 = np.minimum(FIRST_STEP_SCALE * np.sqrt(tol), MAX_FIRST_STEP)
        h = np.where(first & ~last, np.minimum(h0, sch.lam_end - lam), h)
        # DPM-Solver++(2M) update: first order (DDIM) on a sample's first step.
        # Snap to the model's integer training timesteps: between them the sinusoidal time embedding takes values
        # training never showed. A precaution: on tiny-sd it did not change the measured quality.
        lam_n = sch.snap(lam, lam + h)
        h = lam_n - lam
        s_c, s_n = sch.sigma(lam), sch.sigma(lam_n)
        a_n = sch.alpha(lam_n)
        r = np.where(first, 1.0, h_prev / np.maximum(h, _EPS))
        c2 = np.where(first, 0.0, 1.0 / (2.0 * r))
        d = (1 + as_t(c2)) * x0 - as_t(c2) * x0_prev
        x_next = as_t(s_n / s_c) * x - as_t(a_n * np.expm1(-h)) * d
        return x_next, x0, lam_n, h

    def __call__(self, prompts, generators: list, guidance_scale: float, negative_prompts=None,
                 tol: float | np.ndarray | None = None, max_steps: int | np.ndarray | None = None) -> AdaptiveOutput:
        """Sample ``prompts`` (one torch.Generator each). ``tol``/``max_steps``: one value or one per prompt."""
        import torch

        from actors.early_stop import decode_latents, encode_prompt, prepare_latents

        pipe, sch = self.pipe, self.schedule
        n = len(prompts)
        tol_v = np.broadcast_to(np.asarray(self.tol if tol is None else tol, dtype=float), (n,)).copy()
        cap = np.broadcast_to(np.asarray(self.max_steps if max_steps is None else max_steps, dtype=int), (n,)).copy()
        cfg = guidance_scale > 1
        with torch.inference_mode():
            # 1. Encode prompts, draw the initial noise (same seed ⇒ same noise as the pipeline)
            cond, uncond = encode_prompt(pipe, list(prompts), list(negative_prompts) if negative_prompts else None, cfg)
            x = prepare_latents(pipe, n, generators, cond.dtype)
            # 2. Per-sample state: λ now, previous step and x̂0, steps taken
            lam = np.full(n, sch.lam_start)
            h_prev = np.zeros(n)
            x0_prev = torch.zeros_like(x)
            steps = np.zeros(n, dtype=int)
            active = np.arange(n)
            final = [None] * n
            evals = 0

            # 3. Tick: one UNet call over the active samples at their own timesteps
            while len(active):
                # float32: bfloat16 cannot hold timesteps up to 999 exactly (the UNet casts its time embedding itself)
                t = torch.as_tensor(self.timesteps(lam[active]), dtype=torch.float32)
                xa = x[active]
                inp = torch.cat([xa, xa]) if cfg else xa
                emb = torch.cat([uncond[active], cond[active]]) if cfg else cond[active]
                out = pipe.unet(inp, torch.cat([t, t]) if cfg else t, encoder_hidden_states=emb, return_dict=False)[0]
                if cfg:
                    o_u, o_c = out.chunk(2)
                    out = o_u + guidance_scale * (o_c - o_u)
                evals += len(active) * (2 if cfg else 1)
                # 4. The solver step, each sample sized by its own trajectory
                x_new, x0, lam_n, h = self.advance(out, xa, lam[active], h_prev[active], x0_prev[active],
                                                   steps[active], tol_v[active], cap[active])
                x[active] = x_new
                x0_prev[active] = x0
                lam[active], h_prev[active] = lam_n, h
                steps[active] += 1
                done = self.finished(lam_n)
                for j in active[done].tolist():
                    final[j] = x[j]
                active = active[~done]
            # 5. Decode in batch order, as the pipeline does
            images = decode_latents(pipe, torch.stack(final), generators)
        return AdaptiveOutput(images=images, steps_run=steps.tolist(), unet_evals=evals)
