"""Continuous batching (actors/continuous.py): the pipeline's image per sample, whatever joins or leaves around it."""

from pathlib import Path

import numpy as np
import pytest

from actors.continuous import ContinuousSampler, Request
from actors.diffusion import DiffusionCore

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "tiny-sd"
PROMPTS = ["a large red circle on the left on a white background", "many tiny blue stars on a black background",
           "shapes", "two finely striped green squares at the top", "a yellow triangle", "something on the left"]


def _core(scheduler: str) -> DiffusionCore:
    if not (COMMITTED / "model_index.json").is_file():
        pytest.skip("committed models/tiny-sd not present")
    return DiffusionCore(str(COMMITTED), scheduler, batch_size=8, num_threads=2)


def _max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_mixed_step_counts_in_one_active_set_give_the_pipelines_images(scheduler):
    """Same seed and step count ⇒ the plain pipeline's image (≤ 1/255), with samples of other counts joining and
    leaving around it: six requests of four counts through three slots, so every finish frees a slot mid-run."""
    core = _core(scheduler)
    steps = [4, 9, 4, 15, 6, 9]
    seeds = [11, 12, 13, 14, 15, 16]
    reqs = [Request(i, p, s, n) for i, (p, s, n) in enumerate(zip(PROMPTS, seeds, steps))]
    sampler = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=3)
    done = {f.key: f for f in sampler.run(reqs)}
    assert sorted(done) == list(range(len(reqs)))
    for i in range(len(reqs)):
        ref = core.generate([PROMPTS[i]], [seeds[i]], steps[i])[0]
        assert _max_diff(done[i].image, ref) <= 1, (scheduler, i)
        assert done[i].steps == steps[i] and done[i].unet_evals == 2 * steps[i]
    # A freed slot is refilled at the next tick: the set stays full until the queue is empty.
    per_tick = sampler.stats.active_per_tick
    assert sampler.stats.sample_steps == sum(steps) and len(per_tick) == sampler.stats.ticks
    first_short = min(steps)
    assert all(a == 3 for a in per_tick[: first_short + 1])  # the 4-step samples' slots were refilled at once
    assert sampler.stats.fill > 0.8
    # Steady state (requests waiting) runs full; only the drain, after the last one joined, runs part-empty.
    assert 0 < sampler.stats.waiting_ticks < sampler.stats.ticks and sampler.stats.steady_fill == 1.0
    assert per_tick[sampler.stats.waiting_ticks:] == sorted(per_tick[sampler.stats.waiting_ticks:], reverse=True)


def test_a_sample_does_not_depend_on_its_neighbours_or_arrival_order():
    core = _core("ddim")
    target = Request(0, PROMPTS[1], 7, 8)
    alone = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=1).run([target])[0]
    others = [Request(k, p, 100 + k, n) for k, (p, n) in enumerate(zip(PROMPTS, [3, 12, 5, 20, 7, 9]), start=1)]
    crowd = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=4).run(others[:4] + [target] + others[4:])
    got = next(f for f in crowd if f.key == 0)
    assert _max_diff(got.image, alone.image) <= 1
    assert got.first_tick > 0  # it joined a running set
    assert got.mean_active > 1  # and shared its UNet calls


def test_adaptive_steps_run_continuously_and_give_the_adaptive_samplers_images():
    """Adaptive steps under continuous batching: each sample takes the steps and gives the image it gets in the
    adaptive sampler's own batch (≤ 1/255), while samples with other caps join and leave around it, and a sample
    that settles early frees its slot for a waiting one."""
    from actors.adaptive import AdaptiveSampler

    core = _core("ddim")
    adaptive = AdaptiveSampler(core.pipe, tol=0.02)
    caps = [30, 6, 30, 12, 30, 4]
    seeds = [21, 22, 23, 24, 25, 26]
    ref = adaptive(PROMPTS, [torch_gen(s) for s in seeds], core.guidance_scale, max_steps=np.array(caps))
    sampler = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=3, adaptive=adaptive)
    done = {f.key: f for f in sampler.run([Request(i, p, s, c) for i, (p, s, c) in enumerate(zip(PROMPTS, seeds, caps))])}
    assert sorted(done) == list(range(len(PROMPTS)))
    ref_u8 = (np.clip(ref.images, 0, 1) * 255).round().astype(np.uint8)
    for i in range(len(PROMPTS)):
        assert done[i].steps == ref.steps_run[i], i
        assert done[i].steps <= caps[i] and done[i].unet_evals == 2 * done[i].steps
        assert _max_diff(done[i].image, ref_u8[i]) <= 1, i
    assert sampler.stats.sample_steps == sum(ref.steps_run)
    assert any(done[i].steps < caps[i] for i in range(len(caps)))  # some settled before their cap
    assert any(f.first_tick > 0 for f in done.values())  # waiting samples joined a running set


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_early_stopping_runs_continuously_and_gives_the_early_stop_samplers_images(scheduler):
    """Early stopping under continuous batching: each sample stops at the check the early-stop sampler's own batch
    stops it at and gives its image (≤ 1/255), while samples of other budgets join and leave around it. The rate
    rule at a threshold that stops some samples and not others."""
    from actors.early_stop import EarlyStopConfig, EarlyStopSampler

    core = _core(scheduler)
    cfg = EarlyStopConfig(threshold=1.5, interval=1, min_steps=3)
    budgets, seeds = [12, 12, 12, 12, 12, 12], [31, 32, 33, 34, 35, 36]
    ref = EarlyStopSampler(core.pipe, cfg)(PROMPTS, [torch_gen(x) for x in seeds], 12, core.guidance_scale)
    sampler = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=3, early_stop=cfg)
    done = {f.key: f for f in sampler.run([Request(i, p, x, b) for i, (p, x, b) in enumerate(zip(PROMPTS, seeds, budgets))])}
    ref_u8 = (np.clip(ref.images, 0, 1) * 255).round().astype(np.uint8)
    for i in range(len(PROMPTS)):
        assert done[i].steps == ref.steps_run[i], (scheduler, i)
        assert _max_diff(done[i].image, ref_u8[i]) <= 1, (scheduler, i)
    assert any(ref.stopped_early) and not all(ref.stopped_early), ref.steps_run  # the rule must bite, not always
    assert any(f.first_tick > 0 for f in done.values())


def torch_gen(seed: int):
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


def test_bad_requests_and_sizes_are_refused_before_running():
    core = _core("ddim")
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousSampler(core.pipe, core.guidance_scale, max_batch=0)
    sampler = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=2)
    with pytest.raises(ValueError, match="request 1: steps"):
        sampler.run([Request(0, "a", 1, 4), Request(1, "b", 2, 0)])
    assert sampler.stats.ticks == 0


def test_a_request_submitted_mid_run_joins_at_the_next_tick():
    """The incremental API a server drives: submit while samples run, step until idle."""
    core = _core("ddim")
    sampler = ContinuousSampler(core.pipe, core.guidance_scale, max_batch=4)
    sampler.submit([Request(0, PROMPTS[0], 1, 6), Request(1, PROMPTS[2], 2, 6)])
    done = sampler.step() + sampler.step()
    late = Request(2, PROMPTS[3], 3, 4)
    sampler.submit([late])
    while sampler.busy:
        done += sampler.step()
    got = {f.key: f for f in done}
    assert sorted(got) == [0, 1, 2] and got[2].first_tick == 2 and got[2].mean_active == 3
    assert got[0].shared_steps == (4, 6) and got[2].shared_steps == (4, 6)  # the step counts that shared its calls
    ref = core.generate([late.prompt], [late.seed], late.steps)[0]
    assert _max_diff(got[2].image, ref) <= 1
    assert sampler.step() == []  # idle: nothing to do
    # After a failed tick a server drops what the sampler holds and answers those requests itself.
    sampler.submit([Request(5, PROMPTS[0], 1, 3), Request(6, PROMPTS[1], 1, 3)])
    sampler.step()
    sampler.submit([Request(7, PROMPTS[1], 1, 3)])
    assert sorted(sampler.clear()) == [5, 6, 7] and not sampler.busy


def test_a_failing_sample_fails_only_the_rows_not_yet_finished(tiny_model):
    """Through DiffusionCore.run: rows that finished before the failure keep their images; the rest become runtime
    errors (retried by a rerun). A seed the generator refuses fails the tick its sample joins."""
    core = DiffusionCore(tiny_model, "ddim", batch_size=2, num_threads=1, batching="continuous")
    rows = {"id": ["a", "b", "c"], "prompt": ["red", "blue", "green"], "negative_prompt": ["", "", ""],
            "seed": [1, 2, 2**70], "steps": [2, 2, 2], "status": ["ok"] * 3, "error": [""] * 3}
    out = core.run(rows)
    assert out["status"] == ["ok", "ok", "error"]
    assert out["image"][0] and out["image"][1] and not out["image"][2]
    assert out["error"][2].startswith("generation failed:")
