from pathlib import Path

import numpy as np
import pytest
import torch

from actors.adaptive import AdaptiveError, AdaptiveSampler, NoiseSchedule, choose_step
from actors.diffusion import DiffusionCore
from pipelines.calibrate import image_quality

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "tiny-sd"
PROMPTS = ["a large red circle on the left on a white background", "many tiny blue stars on a black background",
           "shapes", "two finely striped green squares at the top"]
SEEDS = [3, 4, 5, 6]


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _u8(images):
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def core():
    if not (COMMITTED / "model_index.json").is_file():
        pytest.skip("committed models/tiny-sd not present")
    return DiffusionCore(str(COMMITTED), "ddim", batch_size=8, num_threads=2)


# Pure helpers -------------------------------------------------------------------------------------------------


def test_snap_moves_at_least_one_timestep_and_lands_on_the_grid():
    ac = torch.linspace(0.9991, 0.0047, 1000).numpy()
    s = NoiseSchedule(ac)
    lam = np.array([s.lam_table[999], s.lam_table[500], s.lam_table[1]])
    out = s.snap(lam, lam + 1e-9)  # a step too small to reach the next timestep
    assert np.allclose(out[:2], [s.lam_table[998], s.lam_table[499]])
    assert out[2] == s.lam_end  # from t=1 the next timestep is the end
    far = s.snap(lam, lam + 100.0)
    assert np.all(far == s.lam_end)


def test_choose_step_shrinks_where_x0_moves_and_finishes_the_schedule():
    lam, h_prev = np.zeros(3), np.full(3, 5.0)
    h = choose_step(lam, h_prev, np.array([1e-4, 1e-2, 1.0]), 0.01, lam_end=10.0, last=np.zeros(3, bool))
    assert h[0] > h[1] > h[2] > 0
    h_last = choose_step(lam, h_prev, np.full(3, 1.0), 0.01, lam_end=10.0, last=np.array([False, True, False]))
    assert h_last[1] == 10.0 and h_last[0] < 10.0


def test_bad_settings_are_one_line_errors(core):
    with pytest.raises(AdaptiveError, match="tolerance"):
        AdaptiveSampler(core.pipe, tol=0)
    with pytest.raises(AdaptiveError, match="max_steps"):
        AdaptiveSampler(core.pipe, max_steps=1)


# On the committed model --------------------------------------------------------------------------------------


def test_small_tolerance_converges_to_the_many_step_ddim_image(core):
    ref = core.generate(PROMPTS[:2], SEEDS[:2], 100)
    out = AdaptiveSampler(core.pipe)(PROMPTS[:2], _gens(SEEDS[:2]), core.guidance_scale, tol=0.0005)
    q = [image_quality(a, b)[0] for a, b in zip(_u8(out.images), ref)]
    assert min(q) >= 0.998, q
    assert max(out.steps_run) < 100  # and it got there in fewer steps than the reference


def test_tolerance_trades_steps_for_quality(core):
    s = AdaptiveSampler(core.pipe)
    loose = s(PROMPTS, _gens(SEEDS), core.guidance_scale, tol=0.05)
    tight = s(PROMPTS, _gens(SEEDS), core.guidance_scale, tol=0.002)
    assert sum(loose.steps_run) < sum(tight.steps_run)
    assert loose.unet_evals == 2 * sum(loose.steps_run)  # CFG: two evaluations per sample-step, nothing else


def test_each_sample_takes_its_own_steps_whatever_its_batch(core):
    s = AdaptiveSampler(core.pipe)
    together = s(PROMPTS, _gens(SEEDS), core.guidance_scale, tol=0.005)
    assert len(set(together.steps_run)) > 1  # samples of one batch took different step counts
    alone = s(PROMPTS[2:3], _gens(SEEDS[2:3]), core.guidance_scale, tol=0.005)
    assert alone.steps_run[0] == together.steps_run[2]
    diff = np.abs(_u8(alone.images[0]).astype(int) - _u8(together.images[2]).astype(int)).max()
    assert diff <= 1  # batched float math differs in the last bits only


def test_per_sample_tolerance_and_cap(core):
    s = AdaptiveSampler(core.pipe)
    out = s(PROMPTS[:2], _gens(SEEDS[:2]), core.guidance_scale, tol=np.array([0.05, 0.002]), max_steps=np.array([50, 4]))
    assert out.steps_run[1] <= 4
    solo = s(PROMPTS[:1], _gens(SEEDS[:1]), core.guidance_scale, tol=0.05)
    assert solo.steps_run[0] == out.steps_run[0]


def test_diffusion_core_runs_adaptive_steps_with_the_step_count_as_cap():
    if not (COMMITTED / "model_index.json").is_file():
        pytest.skip("committed models/tiny-sd not present")
    core = DiffusionCore(str(COMMITTED), "ddim", batch_size=4, num_threads=2, adaptive=True, adaptive_tol=0.05)
    rows = {"id": ["a", "b"], "prompt": PROMPTS[:2], "negative_prompt": ["", ""], "seed": SEEDS[:2],
            "steps": [30, 3], "status": ["ok", "ok"], "error": ["", ""]}
    out = core.run(rows)
    assert out["planned_steps"] == [30, 3]
    assert out["steps"][0] < 30 and out["steps"][1] == 3  # the loose tolerance stops short; the cap binds
    assert out["unet_evals"] == [2 * s for s in out["steps"]]
    assert all(out["image"])
    assert out["scheduler"] == ["adaptive-dpm++2m(tol=0.05)"] * 2  # the metadata says which sampler ran
    assert out["batch_id"][0] == out["batch_id"][1]  # rows of different counts share a batch: each has its cap
    with pytest.raises(AdaptiveError, match="choose one"):
        DiffusionCore(str(COMMITTED), "ddim", adaptive=True, early_stop=True, early_stop_signal=None)


def test_settings_default_tolerance_is_the_samplers():
    from actors.adaptive import DEFAULT_TOL
    from dynagen.core.settings import ImageSettings

    assert ImageSettings().adaptive_tol == DEFAULT_TOL


def test_adaptive_with_early_stop_is_refused_by_the_settings():
    from dynagen.core.settings import load_settings

    with pytest.raises(Exception, match="choose one"):
        load_settings(None, {"images.adaptive": True, "images.early_stop": True}, env={})
