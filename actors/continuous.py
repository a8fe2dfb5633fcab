"""Continuous batching for diffusion: every sample on its own schedule, a freed slot refilled at the next tick.

Grouped batching (``actors/diffusion.py``) runs rows of one step count together, so a window of mixed counts leaves
batches part-empty, and a batch holds its slots until its longest sample ends. Here the unit of work is the *tick*:

* an **active set** of at most ``max_batch`` samples, each at its own step of its own step count;
* each tick is **one UNet call** over the active set with a per-sample timestep tensor (a sample's conditional and
  unconditional CFG halves stay together), then each sample's own scheduler update;
* a sample that has run its steps **leaves** (its latents are decoded with the others finishing on that tick) and a
  waiting sample **joins** at its first step on the next tick, whatever its step count.

Scheduler state. Each sample holds its own diffusers scheduler instance (``set_timesteps(its steps)``), and its update
is that instance's ``step`` on its own slice of the batch's output: the update is diffusers' own, per-sample state
(DPM-Solver++'s history of model outputs, Euler's step index) cannot mix between samples, and with the same seed and
step count a sample's image equals the plain pipeline's to within 1/255 (batched float math differs in the last bits;
tested per scheduler). The per-sample loop costs a few element-wise ops on a latent per sample per tick — nothing next
to the UNet call it follows. Any scheduler with a deterministic ``step`` works (DDIM, Euler, DPM-Solver++ here).

**Adaptive steps** (``actors/adaptive.py``) run here too: given an ``AdaptiveSampler``, a sample's step count is its
cap, its step sizes follow its own trajectory, and it leaves when it reaches the end of the schedule — so a sample
that settles early frees its slot for a waiting one at the next tick. Its update is the adaptive sampler's own
``advance`` (vectorised over the active set), so a sample takes the same steps and gives the same image as in the
adaptive sampler's own batches (to within 1/255; tested).

A batch job calls ``run``; a server drives ``submit`` (any time) and ``step`` (one tick) itself.

**Early stopping** (``actors/early_stop.py``) plugs in the same way: given an ``EarlyStopConfig``, a sample's count is
its budget, its x̂0 is checked every ``interval`` steps with the early-stop sampler's own rule (``convergence_rate``,
``EarlyStopConfig.stops``), and a converged sample leaves at once with its x̂0 — the same steps and image as in the
early-stop sampler's batches (to within 1/255; tested).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np


@dataclass
class Request:
    """One image to make: ``key`` is the caller's handle (a row index)."""

    key: int
    prompt: str
    seed: int
    steps: int
    negative_prompt: str = ""


@dataclass
class Finished:
    """One finished sample."""

    key: int
    image: np.ndarray  # uint8 (H, W, 3)
    steps: int
    unet_evals: int  # sample-evaluations this sample cost (2 per step with CFG)
    mean_active: float  # mean active-set size over the ticks it ran: how many samples shared its UNet calls
    first_tick: int
    last_tick: int
    latency_s: float  # from joining the active set to its decoded image
    shared_steps: tuple[int, ...] = ()  # distinct step counts of the samples that shared its UNet calls (its own too)


@dataclass
class _Sample:
    req: Request
    scheduler: object  # a diffusers scheduler set to the sample's steps; None under adaptive steps
    latents: object  # torch (1, C, h, w)
    cond: object  # torch (1, L, D)
    uncond: object | None
    step: int = 0
    first_tick: int = 0
    active_sum: int = 0
    generator: object = None
    joined_at: float = 0.0
    shared: set = field(default_factory=set)
    # Adaptive steps: the sample's λ, its previous step and x̂0 (actors/adaptive.py). Early stopping: x̂0, timestep
    # and rate at its previous check, and whether it stopped (actors/early_stop.py).
    lam: float = 0.0
    h_prev: float = 0.0
    x0_prev: object = None
    t_prev: object = None
    rate_prev: float = float("nan")
    stopped: bool = False

    def done(self, adaptive) -> bool:
        if adaptive is not None:
            return bool(adaptive.finished(np.array([self.lam]))[0])
        return self.stopped or self.step >= int(self.req.steps)


@dataclass
class TickStats:
    """What a run did: ticks (UNet calls), sample-steps, and the mean active-set fill (sample-steps / ticks / max).
    *Steady state* is the ticks run while requests were still waiting: their fill says whether freed slots were
    refilled at once; the rest of the ticks are the drain, where the last samples finish one by one."""

    ticks: int = 0
    sample_steps: int = 0
    max_batch: int = 1
    active_per_tick: list[int] = field(default_factory=list)
    waiting_ticks: int = 0
    waiting_sample_steps: int = 0

    @property
    def fill(self) -> float:
        return self.sample_steps / max(1, self.ticks * self.max_batch)

    @property
    def steady_fill(self) -> float | None:
        """None when nothing ever waited (every request fit in the active set at once)."""
        return self.waiting_sample_steps / (self.waiting_ticks * self.max_batch) if self.waiting_ticks else None


class ContinuousSampler:
    """Step-level scheduler over a diffusers ``StableDiffusionPipeline``'s parts: the pipeline's own scheduler class
    at each sample's step count, or, given ``adaptive`` (an ``actors.adaptive.AdaptiveSampler`` on the same
    pipeline), adaptive steps with each request's ``steps`` as its cap."""

    def __init__(self, pipe, guidance_scale: float, max_batch: int = 8, decode_batch: int = 8, adaptive=None,
                 early_stop=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if adaptive is not None and early_stop is not None:
            raise ValueError("adaptive steps and early stopping are two per-sample rules: choose one")
        if early_stop is not None:
            from actors.early_stop import check_scheduler

            check_scheduler(pipe.scheduler)
        self.pipe, self.guidance_scale, self.adaptive = pipe, float(guidance_scale), adaptive
        self.early_stop = early_stop  # an actors.early_stop.EarlyStopConfig, or None
        self.max_batch, self.decode_batch = int(max_batch), int(decode_batch)
        self.stats = TickStats(max_batch=self.max_batch)
        self._queue: deque[Request] = deque()
        self._active: list[_Sample] = []

    # 1. Joining: encode the newcomers' prompts together, draw their noise, give each its own scheduler ------------

    def _admit(self, reqs: list[Request], tick: int) -> list[_Sample]:
        import time

        import torch

        from actors.early_stop import encode_prompt, prepare_latents

        joined = time.perf_counter()
        cfg = self.guidance_scale > 1
        negs = [r.negative_prompt or "" for r in reqs]
        cond, uncond = encode_prompt(self.pipe, [r.prompt for r in reqs], negs if any(negs) else None, cfg)
        gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in reqs]
        # Same draw as the pipeline: one generator per sample, noise × the scheduler's init_noise_sigma.
        latents = prepare_latents(self.pipe, len(reqs), gens, cond.dtype)
        out = []
        for j, r in enumerate(reqs):
            if self.adaptive is not None:  # no scheduler instance: the adaptive solver's state lives on the sample
                out.append(_Sample(r, None, latents[j : j + 1], cond[j : j + 1], uncond[j : j + 1] if cfg else None,
                                   first_tick=tick, generator=gens[j], joined_at=joined,
                                   lam=self.adaptive.schedule.lam_start, x0_prev=torch.zeros_like(latents[j : j + 1])))
                continue
            sch = copy.deepcopy(self.pipe.scheduler)
            sch.set_timesteps(int(r.steps), device=latents.device)
            x = latents[j : j + 1]
            if sch.init_noise_sigma != self.pipe.scheduler.init_noise_sigma:  # Euler's depends on the schedule
                x = x / self.pipe.scheduler.init_noise_sigma * sch.init_noise_sigma
            out.append(_Sample(r, sch, x, cond[j : j + 1], uncond[j : j + 1] if cfg else None,
                               first_tick=tick, generator=gens[j], joined_at=joined))
        return out

    # 2. One tick: one UNet call over the active set, then each sample's own update ---------------------------------

    def _tick(self, active: list[_Sample]) -> None:
        import torch

        cfg, ad = self.guidance_scale > 1, self.adaptive
        if ad is not None:
            lam = np.array([s.lam for s in active])
            x = torch.cat([s.latents for s in active])
            t = torch.as_tensor(ad.timesteps(lam), dtype=torch.float32)  # bfloat16 cannot hold 999 exactly
        else:
            ts = [s.scheduler.timesteps[s.step] for s in active]
            x = torch.cat([s.scheduler.scale_model_input(s.latents, t) for s, t in zip(active, ts)])
            t = torch.stack([torch.as_tensor(v) for v in ts]).to(torch.float32)
        if cfg:
            inp, tt = torch.cat([x, x]), torch.cat([t, t])
            emb = torch.cat([torch.cat([s.uncond for s in active]), torch.cat([s.cond for s in active])])
        else:
            inp, tt, emb = x, t, torch.cat([s.cond for s in active])
        out = self.pipe.unet(inp, tt, encoder_hidden_states=emb, return_dict=False)[0]
        if cfg:
            o_u, o_c = out.chunk(2)
            out = o_u + self.guidance_scale * (o_c - o_u)
        counts = {int(s.req.steps) for s in active}
        if ad is not None:  # one vectorised solver step, each sample sized by its own trajectory
            x_next, x0, lam_n, h = ad.advance(
                out, x, lam, np.array([s.h_prev for s in active]), torch.cat([s.x0_prev for s in active]),
                np.array([s.step for s in active]), np.full(len(active), ad.tol),
                np.array([int(s.req.steps) for s in active]))
            for j, s in enumerate(active):
                s.latents, s.x0_prev = x_next[j : j + 1], x0[j : j + 1]
                s.lam, s.h_prev = float(lam_n[j]), float(h[j])
        for j, s in enumerate(active):
            s.shared |= counts
            if ad is None:
                res = s.scheduler.step(out[j : j + 1], ts[j], s.latents, return_dict=True)
                s.latents = res.prev_sample
            s.step += 1
            s.active_sum += len(active)
            if ad is None and self.early_stop is not None:
                self._check(s, res, ts[j])

    def _check(self, s: _Sample, res, t) -> None:
        """Early stopping's convergence check after a sample's step, as ``EarlyStopSampler`` does it for a batch: a
        converged sample's x̂0 becomes its final latent."""
        import torch

        from actors.early_stop import convergence_rate, is_check_step, predicted_x0

        cfg, budget = self.early_stop, int(s.req.steps)
        if not is_check_step(s.step, budget, cfg):
            return
        ntt = s.scheduler.config.num_train_timesteps
        x0 = predicted_x0(s.scheduler, res)
        rate = (convergence_rate(s.x0_prev, x0, s.t_prev, t, ntt) if s.x0_prev is not None
                else torch.full((1,), float("nan")))
        rate_np = rate.float().cpu().numpy().astype(float)
        if cfg.stops(s.step, budget, float(t), rate_np, np.array([s.rate_prev]), ntt)[0]:
            s.latents, s.stopped = x0, True
        else:
            s.x0_prev, s.t_prev, s.rate_prev = x0, t, float(rate_np[0])

    # 3. The loop: ``submit`` queues, ``step`` runs one tick; ``run`` drives both for a batch job, Serve can too ----

    def submit(self, requests: Iterable[Request]) -> None:
        """Queue requests; they join the active set at the next ``step`` with a free slot. A request with steps < 1
        raises ValueError and nothing of this call is queued."""
        reqs = list(requests)
        for r in reqs:
            if int(r.steps) < 1:
                raise ValueError(f"request {r.key}: steps must be ≥ 1, got {r.steps}")
        self._queue.extend(reqs)

    @property
    def busy(self) -> bool:
        """Samples waiting or running."""
        return bool(self._queue or self._active)

    def step(self) -> list[Finished]:
        """One tick: admit waiting requests into free slots, one UNet call, decode the samples that finished."""
        import time

        import torch

        from actors.diffusion import to_uint8
        from actors.early_stop import decode_latents

        if not self.busy:
            return []
        tick, mult = self.stats.ticks, 2 if self.guidance_scale > 1 else 1
        done: list[Finished] = []
        with torch.inference_mode():
            free = self.max_batch - len(self._active)
            if free and self._queue:
                joining = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
                self._active += self._admit(joining, tick)
            self._tick(self._active)
            self.stats.ticks += 1
            self.stats.sample_steps += len(self._active)
            if self._queue:
                self.stats.waiting_ticks += 1
                self.stats.waiting_sample_steps += len(self._active)
            self.stats.active_per_tick.append(len(self._active))
            leaving = [s for s in self._active if s.done(self.adaptive)]
            self._active = [s for s in self._active if not s.done(self.adaptive)]
            for k in range(0, len(leaving), self.decode_batch):
                part = leaving[k : k + self.decode_batch]
                imgs = to_uint8(decode_latents(self.pipe, torch.cat([s.latents for s in part]),
                                               [s.generator for s in part]))
                now = time.perf_counter()
                done += [Finished(s.req.key, img, s.step, mult * s.step, s.active_sum / max(1, s.step), s.first_tick,
                                  tick, now - s.joined_at, tuple(sorted(s.shared))) for s, img in zip(part, imgs)]
        return done

    def run(self, requests: Iterable[Request], on_finished: Callable[[Finished], None] | None = None) -> list[Finished]:
        """Run every request to the end; returns the finished samples in finishing order (``on_finished`` sees each
        as it ends). A request with steps < 1 raises ValueError before anything runs."""
        self.submit(requests)
        done: list[Finished] = []
        try:
            while self.busy:
                for f in self.step():
                    done.append(f)
                    if on_finished is not None:
                        on_finished(f)
        except BaseException:
            self.clear()  # a failed run leaves nothing behind for the next one
            raise
        return done

    def clear(self) -> list[int]:
        """Drop every waiting and running sample (after a failed ``step``: a half-done tick leaves the active set in
        an unknown state); returns their keys so a server can answer them."""
        keys = [r.key for r in self._queue] + [s.req.key for s in self._active]
        self._queue.clear()
        self._active = []
        return keys
