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

A batch job calls ``run``; a server drives ``submit`` (any time) and ``step`` (one tick) itself.

Not handled here: per-sample early stopping and adaptive steps (``actors/early_stop.py``, ``actors/adaptive.py``) keep
their own samplers; the job refuses to combine them with continuous batching.
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


@dataclass
class _Sample:
    req: Request
    scheduler: object
    latents: object  # torch (1, C, h, w)
    cond: object  # torch (1, L, D)
    uncond: object | None
    step: int = 0
    first_tick: int = 0
    active_sum: int = 0
    generator: object = None
    joined_at: float = 0.0


@dataclass
class TickStats:
    """What a run did: ticks (UNet calls), sample-steps, and the mean active-set fill (sample-steps / ticks / max)."""

    ticks: int = 0
    sample_steps: int = 0
    max_batch: int = 1
    active_per_tick: list[int] = field(default_factory=list)

    @property
    def fill(self) -> float:
        return self.sample_steps / max(1, self.ticks * self.max_batch)


class ContinuousSampler:
    """Step-level scheduler over a diffusers ``StableDiffusionPipeline``'s parts (the pipeline's own scheduler class)."""

    def __init__(self, pipe, guidance_scale: float, max_batch: int = 8, decode_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.pipe, self.guidance_scale = pipe, float(guidance_scale)
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

        cfg = self.guidance_scale > 1
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
        for j, (s, tj) in enumerate(zip(active, ts)):
            s.latents = s.scheduler.step(out[j : j + 1], tj, s.latents, return_dict=False)[0]
            s.step += 1
            s.active_sum += len(active)

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
            self.stats.active_per_tick.append(len(self._active))
            leaving = [s for s in self._active if s.step >= int(s.req.steps)]
            self._active = [s for s in self._active if s.step < int(s.req.steps)]
            for k in range(0, len(leaving), self.decode_batch):
                part = leaving[k : k + self.decode_batch]
                imgs = to_uint8(decode_latents(self.pipe, torch.cat([s.latents for s in part]),
                                               [s.generator for s in part]))
                now = time.perf_counter()
                done += [Finished(s.req.key, img, s.step, mult * s.step, s.active_sum / max(1, s.step), s.first_tick,
                                  tick, now - s.joined_at) for s, img in zip(part, imgs)]
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
            self._queue.clear()  # a failed run leaves nothing behind for the next one
            self._active = []
            raise
        return done
